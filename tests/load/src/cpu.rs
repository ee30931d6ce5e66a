//! CPU time of this process and of watched ones, from `/proc` (Linux; on
//! other systems nothing is reported): how many cores each used while a
//! run was measured, to tell what limited it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`; 100 on
/// every Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// The name this tool's own CPU is reported under.
pub const SELF_NAME: &str = "freshet-load (this tool)";

/// The name every process's CPU together is reported under.
pub const MACHINE_NAME: &str = "machine (all processes)";

/// Which processes to watch besides this one.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Those whose name (`/proc/PID/comm`) starts with one of these.
    pub prefixes: Vec<String>,
    /// Those descended from one of these process ids (a `deploy/dev.sh`).
    pub trees: Vec<u32>,
}

/// One process as `/proc` shows it.
struct Process {
    pid: u32,
    parent: u32,
    name: String,
    cpu_seconds: f64,
}

fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let dir = entry.path();
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            Some(Process {
                pid,
                parent: parse_stat_parent(&stat)?,
                name: name.trim().to_owned(),
                cpu_seconds: parse_stat_cpu(&stat)?,
            })
        })
        .collect()
}

/// CPU seconds used so far, by process name: this tool, and every watched
/// process, summed per name.
pub fn cpu_seconds(watch: &Watch) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    if let Some(seconds) = used(Path::new("/proc/self")) {
        totals.insert(SELF_NAME.to_owned(), seconds);
    }
    if let Some(seconds) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| parse_machine_busy(&stat))
    {
        totals.insert(MACHINE_NAME.to_owned(), seconds);
    }
    let all = processes();
    let own = std::process::id();
    // Processes this tool started (a throwaway membership), apart.
    for pid in descendants(&all, &[own]) {
        if let Some(process) = all.iter().find(|p| p.pid == pid && p.pid != own) {
            *totals
                .entry(format!("{} (started by this tool)", process.name))
                .or_insert(0.0) += process.cpu_seconds;
        }
    }
    if watch.prefixes.is_empty() && watch.trees.is_empty() {
        return totals;
    }
    let mut chosen: BTreeSet<u32> = all
        .iter()
        .filter(|p| {
            watch
                .prefixes
                .iter()
                .any(|prefix| p.name.starts_with(prefix.as_str()))
        })
        .map(|p| p.pid)
        .collect();
    chosen.extend(descendants(&all, &watch.trees));
    let started_here = descendants(&all, &[own]);
    for process in all
        .iter()
        .filter(|p| chosen.contains(&p.pid) && !started_here.contains(&p.pid))
    {
        *totals.entry(process.name.clone()).or_insert(0.0) += process.cpu_seconds;
    }
    totals
}

/// `roots` and every process descended from them.
fn descendants(all: &[Process], roots: &[u32]) -> BTreeSet<u32> {
    let mut frontier: Vec<u32> = roots.to_vec();
    let mut found: BTreeSet<u32> = frontier.iter().copied().collect();
    while let Some(parent) = frontier.pop() {
        for child in all.iter().filter(|p| p.parent == parent) {
            if found.insert(child.pid) {
                frontier.push(child.pid);
            }
        }
    }
    found
}

/// User plus system CPU seconds of the process at `dir`.
fn used(dir: &Path) -> Option<f64> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// utime + stime from a `/proc/PID/stat` line, in seconds. The command
/// name is in parentheses and may hold spaces, so fields are counted from
/// the last `)`: state is the first after it, utime the 12th, stime the
/// 13th.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Busy CPU seconds of the whole machine, from the `cpu` line of
/// `/proc/stat` (user, nice, system, irq, softirq and steal; not idle or
/// iowait).
fn parse_machine_busy(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    Some((field(0) + field(1) + field(2) + field(5) + field(6) + field(7)) / TICKS_PER_SECOND)
}

/// The parent process id from a `/proc/PID/stat` line (the second field
/// after the command name).
fn parse_stat_parent(stat: &str) -> Option<u32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Cores used between two readings `elapsed` apart, by name.
pub fn cores_between(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    elapsed: Duration,
) -> BTreeMap<String, f64> {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return BTreeMap::new();
    }
    after
        .iter()
        .map(|(name, total)| {
            let spent = total - before.get(name).copied().unwrap_or(0.0);
            (name.clone(), (spent / seconds).max(0.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_fields_are_counted_after_the_command_name() {
        let stat = "1234 (freshet (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_stat_parent(stat), Some(1));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn machine_time_is_everything_but_idle_and_iowait() {
        let stat = "cpu  100 10 50 1000 200 5 5 30 0 0\ncpu0 50 5 25 500 100 2 2 15 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(2.0));
        assert_eq!(parse_machine_busy("intr 1 2 3"), None);
    }

    #[test]
    fn cores_are_cpu_seconds_over_wall_seconds() {
        let before = BTreeMap::from([("a".to_owned(), 1.0)]);
        let after = BTreeMap::from([("a".to_owned(), 4.0), ("b".to_owned(), 1.0)]);
        let cores = cores_between(&before, &after, Duration::from_secs(2));
        assert_eq!(cores["a"], 1.5);
        assert_eq!(cores["b"], 0.5);
    }

    #[test]
    fn this_process_and_its_children_are_watched_on_linux() {
        if !cfg!(target_os = "linux") {
            return;
        }
        assert!(cpu_seconds(&Watch::default()).contains_key(SELF_NAME));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let tree = Watch {
            prefixes: vec![],
            trees: vec![std::process::id()],
        };
        // Until the child has exec'd, it still carries this process's name.
        let mut watched = cpu_seconds(&tree);
        for _ in 0..100 {
            if watched.contains_key("sleep (started by this tool)") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            watched = cpu_seconds(&tree);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            watched.contains_key("sleep (started by this tool)"),
            "{watched:?}"
        );
    }
}
