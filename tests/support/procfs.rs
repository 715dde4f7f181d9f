//! A process's CPU time and memory, read from /proc (benches measure server children).

use std::time::Duration;

/// User plus system CPU time of `pid` ("self" for this process).
pub fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_micros(ticks * 1_000_000 / 100)
}

/// A KiB figure of /proc/<pid>/status, e.g. `VmRSS:` (resident) or `VmHWM:` (its peak).
pub fn status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}
