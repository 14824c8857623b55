//! CPU time and memory of the lab's processes, read from /proc.
//!
//! A component is a process with everything below it (PostgreSQL's
//! backends are children of the postmaster), except the driver, which is
//! txlab itself without its children (they are the lab it measures).
//! CPU counts user + system time of live processes plus what their exited
//! children left them (cutime/cstime), so a backend that came and went
//! between two samples is not lost. Memory is the resident set summed over
//! the tree, which counts PostgreSQL's shared buffers once per backend
//! that touched them: an upper bound for PostgreSQL, exact for the rest.
//! When the proxy runs (on its own threads inside txlab), its CPU is
//! reported as `proxy` and taken out of the driver's; its memory stays in
//! the driver's, as threads share one address space.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// The name of the proxy's threads (a thread name holds at most 15 bytes).
pub const PROXY_THREADS: &str = "txlab-proxy";

/// A component to account for: its name and root process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub pid: u32,
    /// Whether the processes below it belong to it.
    pub with_children: bool,
}

/// One component's resources at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub cpu_s: f64,
    pub rss_kib: u64,
}

/// One component's use of resources over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Use {
    /// CPU seconds spent in the interval.
    pub cpu_s: f64,
    /// Cores busy on average (CPU seconds per wall second).
    pub cores: f64,
    /// Resident memory at the end, in MiB.
    pub rss_mib: f64,
}

/// What /proc/<pid>/stat says about one process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    ppid: u32,
    /// utime + stime + cutime + cstime, in clock ticks.
    ticks: u64,
    /// utime + stime: its own, without what exited children left it (the
    /// figure a thread's stat line means).
    own_ticks: u64,
    rss_pages: u64,
}

/// Parses a stat line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: num(4)? as u32,
        ticks: num(14)? + num(15)? + num(16)? + num(17)?,
        own_ticks: num(14)? + num(15)?,
        rss_pages: num(24)?,
    })
}

fn all_stats() -> HashMap<u32, Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat(&line)?))
        })
        .collect()
}

/// The processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    all_stats()
        .into_iter()
        .filter(|(_, s)| s.ppid == parent)
        .map(|(pid, _)| pid)
        .collect()
}

/// The sum of `stats` over `root` and, if asked, everything below it.
fn tree_total(stats: &HashMap<u32, Stat>, root: u32, with_children: bool) -> (u64, u64) {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if with_children {
        for (pid, s) in stats {
            children.entry(s.ppid).or_default().push(*pid);
        }
    }
    let (mut ticks, mut pages) = (0, 0);
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if let Some(s) = stats.get(&pid) {
            ticks += s.ticks;
            pages += s.rss_pages;
        }
        todo.extend(children.get(&pid).into_iter().flatten());
    }
    (ticks, pages)
}

/// Samples every component now. A component whose process is gone is left out.
pub fn sample(components: &[Component]) -> BTreeMap<String, Sample> {
    // SAFETY: sysconf only reads a constant of the system.
    #[allow(unsafe_code)]
    let (tick_hz, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let (tick_hz, page_kib) = (tick_hz.max(1) as f64, (page.max(1) / 1024) as u64);
    let stats = all_stats();
    let mut out: BTreeMap<String, Sample> = components
        .iter()
        .filter(|c| stats.contains_key(&c.pid))
        .map(|c| {
            let (ticks, pages) = tree_total(&stats, c.pid, c.with_children);
            let s = Sample {
                cpu_s: ticks as f64 / tick_hz,
                rss_kib: pages * page_kib,
            };
            (c.name.clone(), s)
        })
        .collect();
    let proxy_ticks = own_thread_ticks(PROXY_THREADS);
    if let (Some(driver), true) = (out.get_mut("driver"), proxy_ticks > 0) {
        let proxy_s = proxy_ticks as f64 / tick_hz;
        driver.cpu_s = (driver.cpu_s - proxy_s).max(0.0);
        out.insert(
            "proxy".into(),
            Sample {
                cpu_s: proxy_s,
                rss_kib: 0,
            },
        );
    }
    out
}

/// User + system ticks of this process's threads whose name starts with `prefix`.
fn own_thread_ticks(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|name| name.starts_with(prefix)))
        .filter_map(|t| {
            let line = std::fs::read_to_string(t.path().join("stat")).ok()?;
            Some(parse_stat(&line)?.own_ticks)
        })
        .sum()
}

/// Use per component between two samples `wall_s` seconds apart.
pub fn between(
    before: &BTreeMap<String, Sample>,
    after: &BTreeMap<String, Sample>,
    wall_s: f64,
) -> BTreeMap<String, Use> {
    after
        .iter()
        .map(|(name, a)| {
            // A component that restarted in between counts from zero.
            let cpu_s = match before.get(name) {
                Some(b) if b.cpu_s <= a.cpu_s => a.cpu_s - b.cpu_s,
                _ => a.cpu_s,
            };
            let u = Use {
                cpu_s,
                cores: if wall_s > 0.0 { cpu_s / wall_s } else { 0.0 },
                rss_mib: a.rss_kib as f64 / 1024.0,
            };
            (name.clone(), u)
        })
        .collect()
}

/// The whole machine's CPU time so far, from the first line of /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostCpu {
    /// Every state's ticks: user, nice, system, idle, iowait, irq, softirq, steal.
    total: u64,
    /// Ticks the hypervisor ran something else while this machine's CPUs
    /// had work: time the lab lost without any process being charged for it.
    steal: u64,
}

/// Reads [`HostCpu`] now; None where /proc/stat is not there or says less.
fn host_cpu() -> Option<HostCpu> {
    parse_host_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_host_cpu(stat: &str) -> Option<HostCpu> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    (ticks.len() == 8).then(|| HostCpu {
        total: ticks.iter().sum(),
        steal: ticks[7],
    })
}

/// The share of the machine's CPU time stolen between two readings, 0 to 1.
fn steal_share(before: HostCpu, after: HostCpu) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let steal = after.steal.checked_sub(before.steal)?;
    (total > 0).then(|| steal as f64 / total as f64)
}

/// CPU time the host stole while something ran.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Steal {
    /// Share of the machine's CPU time over the whole run, 0 to 1.
    pub mean: f64,
    /// The same in its worst second: steal comes in bursts (seconds at
    /// 30-50 % on a shared VM) that a mean over a cell thins out, while a
    /// saturated machine sees a steady few percent.
    pub peak: f64,
}

/// Runs `work`, reading the machine's steal every second meanwhile;
/// None for the steal where /proc/stat cannot be read.
pub async fn watch_steal<F: std::future::Future>(work: F) -> (F::Output, Option<Steal>) {
    let first = host_cpu();
    let (mut previous, mut peak) = (first, None::<f64>);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.tick().await; // the first tick is now
    tokio::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = tick.tick() => {
                let now = host_cpu();
                if let Some(s) = previous.zip(now).and_then(|(b, a)| steal_share(b, a)) {
                    peak = Some(peak.map_or(s, |p| p.max(s)));
                }
                previous = now;
            }
        }
    };
    let mean = first.zip(host_cpu()).and_then(|(b, a)| steal_share(b, a));
    (
        out,
        mean.map(|mean| Steal {
            mean,
            peak: peak.unwrap_or(mean).max(mean),
        }),
    )
}

/// The most resident memory this process has held so far, in MiB
/// (`VmHWM` in /proc/self/status).
pub fn own_peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_peak_rss_kib(&status).map(|kib| kib as f64 / 1024.0)
}

fn parse_peak_rss_kib(status: &str) -> Option<u64> {
    let value = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    value.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// txlab's own process: the driver.
pub fn driver() -> Component {
    Component {
        name: "driver".into(),
        pid: std::process::id(),
        with_children: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_memory_is_read_from_the_status_file() {
        let status = "Name:\ttxlab\nVmPeak:\t 2097152 kB\nVmHWM:\t   40160 kB\nVmRSS:\t   38000 kB\n";
        assert_eq!(parse_peak_rss_kib(status), Some(40_160));
        assert_eq!(parse_peak_rss_kib("VmRSS:\t 1 kB\n"), None);
        assert!(
            own_peak_rss_mib().is_some_and(|m| m > 0.0),
            "this process's status"
        );
    }

    #[test]
    fn stolen_time_is_read_from_the_machine_line() {
        // A real /proc/stat head: user nice system idle iowait irq softirq steal guest guest_nice.
        let before = "cpu  1000 0 500 8000 100 0 50 350 0 0\ncpu0 500 0 250 4000 50 0 25 175 0 0\n";
        let after = "cpu  1100 0 550 8300 100 0 50 400 0 0\ncpu0 550 0 275 4150 50 0 25 200 0 0\n";
        let (b, a) = (parse_host_cpu(before).unwrap(), parse_host_cpu(after).unwrap());
        assert_eq!((b.total, b.steal), (10_000, 350));
        assert_eq!(steal_share(b, a), Some(50.0 / 500.0));
        assert_eq!(steal_share(a, b), None, "readings out of order");
        assert_eq!(parse_host_cpu("cpu  1 2 3\n"), None, "too few fields");
        assert!(
            host_cpu().is_some_and(|c| c.total > 0),
            "this machine's /proc/stat"
        );
    }

    #[tokio::test]
    async fn steal_is_watched_while_the_work_runs() {
        let (out, steal) = watch_steal(async {
            tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
            7
        })
        .await;
        assert_eq!(out, 7);
        let s = steal.expect("this machine has /proc/stat");
        assert!(
            (0.0..=1.0).contains(&s.mean) && (s.mean..=1.0).contains(&s.peak),
            "{s:?}"
        );
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped_over() {
        // Fields 3.. of a real line, with comm "(a b) c".
        let line = "42 ((a b) c) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 3 2 20 0 4 0 99 1000000 321 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 7,
                ticks: 250 + 50 + 3 + 2,
                own_ticks: 250 + 50,
                rss_pages: 321
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_tree_sums_its_descendants_only_when_asked() {
        let s = |ppid, ticks| Stat {
            ppid,
            ticks,
            own_ticks: ticks,
            rss_pages: 1,
        };
        let stats: HashMap<u32, Stat> = [(1, s(0, 10)), (2, s(1, 5)), (3, s(2, 1)), (4, s(0, 100))]
            .into_iter()
            .collect();
        assert_eq!(tree_total(&stats, 1, true), (16, 3));
        assert_eq!(tree_total(&stats, 1, false), (10, 1));
        assert_eq!(tree_total(&stats, 9, true), (0, 0));
    }

    #[test]
    fn this_process_is_sampled_and_burning_cpu_shows() {
        let me = [driver()];
        let before = sample(&me);
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 300 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let after = sample(&me);
        let used = between(&before, &after, t.elapsed().as_secs_f64());
        let u = used["driver"];
        // A 300 ms busy loop; ticks are 10 ms, and the test runner may share the core.
        assert!(u.cpu_s >= 0.05, "{u:?}");
        assert!(u.rss_mib > 1.0, "{u:?}");
    }
}
