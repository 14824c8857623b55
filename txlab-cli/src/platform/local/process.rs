//! Child processes that cannot outlive the lab.
//!
//! Each child gets its own process group (so a terminal's Ctrl-C reaches
//! txlab only, which then stops children in order) and a parent-death
//! signal (so a killed txlab takes them with it). Stopping signals the whole
//! group, which includes grandchildren such as PostgreSQL's backends.
#![allow(unsafe_code)] // fork-time set-up needs raw libc calls; each is commented.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

/// An unprivileged account to run PostgreSQL as (it refuses to run as root).
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// `Some(nobody)` when txlab runs as root, `None` otherwise.
pub fn unprivileged_user() -> anyhow::Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::env::var("TXLAB_PG_USER").unwrap_or_else(|_| "nobody".into());
    let cname = std::ffi::CString::new(name.clone()).context("TXLAB_PG_USER holds a NUL byte")?;
    // SAFETY: getpwnam reads a static buffer; we copy the two ids out at once
    // and nothing else in this process calls it concurrently at start-up.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        bail!(
            "txlab runs as root, so PostgreSQL must run as an unprivileged user, but user `{name}` does not exist; \
             create it or set TXLAB_PG_USER to an existing one"
        );
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(RunAs { name, uid, gid }))
}

/// A running child in its own process group.
pub struct Supervised {
    pub name: String,
    child: tokio::process::Child,
    pgid: i32,
}

/// Prepares `cmd` to run in its own process group, as `run_as` if given,
/// and to die with this process.
pub fn contain(cmd: &mut tokio::process::Command, run_as: Option<&RunAs>) {
    let parent = std::process::id() as libc::pid_t;
    let ids = run_as.map(|r| (r.uid, r.gid));
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (setpgid, setgroups, setgid, setuid, prctl,
    // getppid, _exit); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((uid, gid)) = ids {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After setuid: changing credentials clears the death signal.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(111);
            }
            Ok(())
        });
    }
}

/// Opens (appending) the log file a child writes to.
pub fn log_sink(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log file {}", path.display()))?;
    let err = file.try_clone()?;
    Ok((Stdio::from(file), Stdio::from(err)))
}

impl Supervised {
    /// Spawns `cmd` (already [`contain`]ed) and registers its group with the reaper.
    pub fn spawn(
        name: &str,
        cmd: &mut tokio::process::Command,
        reaper: &super::reaper::Reaper,
    ) -> anyhow::Result<Supervised> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id().with_context(|| format!("{name} exited at once"))? as i32;
        reaper.watch_group(pid)?;
        Ok(Supervised {
            name: name.to_string(),
            child,
            pgid: pid,
        })
    }

    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` to the group, waits up to `grace`, then kills the group.
    pub async fn stop(&mut self, signal: i32, grace: Duration, reaper: &super::reaper::Reaper) {
        if self.exited().is_none() {
            kill_group(self.pgid, signal);
            if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
                tracing::warn!(name = %self.name, "did not stop in time; killing");
                kill_group(self.pgid, libc::SIGKILL);
                let _ = self.child.wait().await;
            }
        }
        // Grandchildren may linger briefly in the group (PostgreSQL backends
        // exit on their own once the postmaster is gone): make sure.
        // ESRCH when the group is already empty is fine.
        kill_group(self.pgid, libc::SIGKILL);
        reaper.release_group(self.pgid);
    }
}

/// Sends `signal` to a process group this lab started.
pub fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid names
    // a process group, and `pgid` is always one of our own children's.
    unsafe { libc::kill(-pgid, signal) };
}

/// Ports handed to children come from below Linux's default ephemeral
/// range (32768–60999): a port the kernel picks for `bind(0)` lives in that
/// range, so outgoing connections made before the child binds (the lab's
/// own, the services') could take it in between.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// `n` distinct ports below the ephemeral range, free on 127.0.0.1 right
/// now (each is held until all are found, so none is handed out twice).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n * 200 {
        if held.len() == n {
            break;
        }
        let port = rng.gen_range(PORT_RANGE);
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    if held.len() < n {
        bail!(
            "could not find {n} free ports on 127.0.0.1 between {} and {}",
            PORT_RANGE.start,
            PORT_RANGE.end
        );
    }
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// The last lines of a log, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
