//! The reaper: a tiny shell process that outlives a killed txlab just long
//! enough to clean up after it.
//!
//! txlab tells it, over a pipe, which process groups and which scratch
//! directory it made. When the pipe closes — on a normal exit after txlab's
//! own orderly teardown, or because txlab was killed with SIGKILL and could
//! run no code at all — the reaper kills any group still registered and
//! removes the directory (unless told to keep it). It runs in its own
//! process group so a terminal's Ctrl-C does not reach it.

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use anyhow::Context;

const SCRIPT: &str = r#"
groups=""; root=""; keep=0
while read -r verb arg; do
  case "$verb" in
    group) groups="$groups $arg" ;;
    release) groups=$(for g in $groups; do [ "$g" = "$arg" ] || printf '%s ' "$g"; done) ;;
    root) root="$arg" ;;
    keep) keep=1 ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
if [ -n "$root" ] && [ "$keep" = 0 ]; then
  sleep 0.5
  rm -rf -- "$root"
fi
"#;

/// Shared by everything that starts or stops children (the supervisor
/// restarts services from its own task), hence the inner locks.
pub struct Reaper {
    child: Mutex<Child>,
    pipe: Mutex<Option<ChildStdin>>,
}

impl Reaper {
    #[allow(unsafe_code)]
    pub fn start() -> anyhow::Result<Reaper> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setpgid is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the clean-up helper (/bin/sh)")?;
        let pipe = child.stdin.take();
        Ok(Reaper {
            child: Mutex::new(child),
            pipe: Mutex::new(pipe),
        })
    }

    fn say(&self, line: String) -> anyhow::Result<()> {
        let mut guard = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        let pipe = guard.as_mut().context("the clean-up helper is gone")?;
        pipe.write_all(line.as_bytes())?;
        pipe.flush()?;
        Ok(())
    }

    pub fn watch_group(&self, pgid: i32) -> anyhow::Result<()> {
        self.say(format!("group {pgid}\n"))
    }

    /// Forgets a group txlab stopped itself (its id may be reused later).
    pub fn release_group(&self, pgid: i32) {
        let _ = self.say(format!("release {pgid}\n"));
    }

    /// The scratch directory to delete at the end.
    pub fn watch_root(&self, dir: &Path) -> anyhow::Result<()> {
        let text = dir.to_str().context("scratch directory path is not UTF-8")?;
        anyhow::ensure!(!text.contains('\n'), "scratch directory path holds a newline");
        self.say(format!("root {text}\n"))
    }

    pub fn keep_root(&self) {
        let _ = self.say("keep\n".into());
    }

    /// Closes the pipe and waits for the clean-up to finish.
    pub fn finish(&self) {
        drop(self.pipe.lock().unwrap_or_else(|p| p.into_inner()).take());
        let _ = self.child.lock().unwrap_or_else(|p| p.into_inner()).wait();
    }
}
