//! Resource use of a process, read from /proc.

use std::time::Duration;

use anyhow::Context;

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    kib_field(&status, "VmRSS:").context("in /proc/PID/status")
}

/// Memory only process `pid` holds (its unique set size: private pages,
/// resident), in KiB: what one more agent costs a host whose other agents
/// share the binary.
pub fn private_kib(pid: u32) -> anyhow::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let private = kib_field(&rollup, "Private_Clean:")? + kib_field(&rollup, "Private_Dirty:")?;
    Ok(private)
}

/// The value of a `Name:   123 kB` line.
fn kib_field(text: &str, name: &str) -> anyhow::Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name} line"))
}

/// CPU time (user + system) process `pid` has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).context("bad /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields.get(11..13).context("short /proc/PID/stat")?.iter().filter_map(|f| f.parse::<u64>().ok()).sum();
    // utime and stime are in clock ticks: 100 a second on every mainstream Linux configuration.
    Ok(Duration::from_millis(ticks * 10))
}
