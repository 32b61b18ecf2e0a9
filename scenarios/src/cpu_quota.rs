//! CPU starvation for lab agents: a cgroup with a CPU quota, as a container
//! runtime sets one, holding one process. The process runs for its quota at
//! the start of each period and stalls until the next, like an agent on a
//! host whose CPU is taken by others. Works with cgroup v1 (the `cpu`
//! controller's CFS quota) and v2 (`cpu.max`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The CFS period the quota applies to: long, so the stalls are long.
const PERIOD_US: u64 = 1_000_000;

/// A cgroup holding one process to a share of one CPU; the process goes
/// back to the root cgroup and the cgroup is removed when this is dropped.
#[derive(Debug)]
pub struct CpuQuota {
    dir: PathBuf,
    root: PathBuf,
    pid: u32,
}

/// Where the CPU controller is mounted, and whether it is cgroup v2.
fn cpu_root() -> anyhow::Result<(PathBuf, bool)> {
    let v1 = Path::new("/sys/fs/cgroup/cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Ok((v1.to_path_buf(), false));
    }
    let v2 = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "cpu") {
        return Ok((v2.to_path_buf(), true));
    }
    bail!("no cgroup CPU controller at /sys/fs/cgroup/cpu (v1) or in /sys/fs/cgroup/cgroup.controllers (v2)")
}

impl CpuQuota {
    /// Puts process `pid` in a new cgroup `name` limited to `percent` % of
    /// one CPU.
    pub fn new(name: &str, pid: u32, percent: u32) -> anyhow::Result<Self> {
        let (root, v2) = cpu_root()?;
        let dir = root.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create cgroup {}", dir.display()))?;
        let quota = Self { dir, root, pid };
        let quota_us = PERIOD_US * u64::from(percent.clamp(1, 100)) / 100;
        if v2 {
            quota.write("cpu.max", &format!("{quota_us} {PERIOD_US}"))?;
        } else {
            quota.write("cpu.cfs_period_us", &PERIOD_US.to_string())?;
            quota.write("cpu.cfs_quota_us", &quota_us.to_string())?;
        }
        quota.write("cgroup.procs", &pid.to_string())?;
        Ok(quota)
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).with_context(|| format!("cannot write {value:?} to {}", path.display()))
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        // The process may have exited already; the cgroup is then empty.
        let _ = std::fs::write(self.root.join("cgroup.procs"), self.pid.to_string());
        if let Err(error) = std::fs::remove_dir(&self.dir) {
            eprintln!("cannot remove cgroup {}: {error}", self.dir.display());
        }
    }
}

/// Removes the empty cgroups under the CPU controller whose name `doomed`
/// accepts (left by a run that was killed).
pub(crate) fn remove_cgroups(doomed: impl Fn(&str) -> bool) {
    let Ok((root, _)) = cpu_root() else { return };
    let Ok(entries) = std::fs::read_dir(&root) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(&doomed) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}
