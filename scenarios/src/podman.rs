//! A real podman (Debian's, CNI network backend) in lab hosts, with mesh's
//! CNI plugin: per host a containers.conf, a CNI config dir holding one
//! conflist per mesh network, a CNI bin dir with `mesh-cni` (the `mesh`
//! binary under that name) beside the standard plugins, and its own
//! storage. podman runs in its host's network namespace; each container
//! gets a namespace of its own, which `mesh-cni` asks the host's agent to
//! attach. The image is busybox-static, imported.
//!
//! [`PodmanLab`] removes its containers before the lab itself goes, pass
//! or fail.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::image::{busybox_image, CONTAINER_LIFETIME, IMAGE};
use crate::lab::Lab;
use crate::process::{run, Output};

/// A lab whose hosts run podman with mesh's CNI plugin.
pub struct PodmanLab {
    lab: Lab,
    ready: Vec<usize>,
}

impl Deref for PodmanLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl DerefMut for PodmanLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

impl PodmanLab {
    /// Wraps `lab`; no host is set up yet.
    pub fn new(lab: Lab) -> anyhow::Result<Self> {
        if run("podman", ["--version"]).is_err() {
            bail!("podman is not installed: apt-get install podman (the README's test command does)");
        }
        Ok(Self { lab, ready: Vec::new() })
    }

    fn root(&self, i: usize) -> PathBuf {
        self.lab.host_dir(i).join("podman")
    }

    /// The CNI config dir of host `i`.
    pub fn cni_config_dir(&self, i: usize) -> PathBuf {
        self.root(i).join("cni-conf")
    }

    /// The CNI bin dir of host `i` (`mesh-cni` and the standard plugins).
    pub fn cni_bin_dir(&self, i: usize) -> PathBuf {
        self.root(i).join("cni-bin")
    }

    /// Sets host `i` up: its dirs, `mesh-cni`, its containers.conf, and
    /// [`IMAGE`] imported.
    pub fn prepare(&mut self, i: usize) -> anyhow::Result<()> {
        let (config, bin) = (self.cni_config_dir(i), self.cni_bin_dir(i));
        std::fs::create_dir_all(&config)?;
        std::fs::create_dir_all(&bin)?;
        std::os::unix::fs::symlink(self.lab.mesh_path(), bin.join("mesh-cni"))?;
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{bin}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{config}\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{events}\"\n",
            bin = bin.display(),
            config = config.display(),
            events = self.root(i).join("events.log").display(),
        );
        std::fs::write(self.root(i).join("containers.conf"), conf)?;
        self.ready.push(i);
        let image = busybox_image(&self.lab)?;
        self.podman_ok(i, &["import", image.to_str().context("path is not UTF-8")?, IMAGE])?;
        Ok(())
    }

    /// Writes host `i`'s CNI network `name`: mesh network `network`
    /// through its agent, with the runtime's aliases.
    pub fn add_network(&self, i: usize, name: &str, network: &str) -> anyhow::Result<()> {
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [{
                "type": "mesh-cni",
                "network": network,
                "socket": self.lab.socket(i),
                "capabilities": { "aliases": true },
            }],
        });
        std::fs::write(self.cni_config_dir(i).join(format!("{name}.conflist")), conflist.to_string())?;
        Ok(())
    }

    /// `podman ARGS` on host `i`, as root with its own storage and config.
    pub fn podman(&self, i: usize, args: &[&str]) -> anyhow::Result<Output> {
        let root = self.root(i);
        let storage = [
            format!("--root={}", root.join("storage").display()),
            format!("--runroot={}", root.join("run").display()),
            "--storage-driver=vfs".to_owned(),
            "--cgroup-manager=cgroupfs".to_owned(),
            "--events-backend=file".to_owned(),
        ];
        let netns = format!("--net=/run/netns/{}", self.lab.netns(i));
        let conf = format!("CONTAINERS_CONF={}", root.join("containers.conf").display());
        let mut all: Vec<&str> = vec![&conf, "nsenter", &netns, "podman"];
        all.extend(storage.iter().map(String::as_str));
        all.extend(args);
        run("env", all)
    }

    /// `podman ARGS` that must succeed; returns its stdout.
    pub fn podman_ok(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let out = self.podman(i, args)?;
        if !out.success {
            bail!("`podman {}` on h{i} failed: {}", args.join(" "), out.stderr.trim());
        }
        Ok(out.stdout)
    }

    /// Starts a long-running container `name` on host `i` in CNI network
    /// `network`, resolving through mesh, with `extra` flags.
    pub fn start(&self, i: usize, name: &str, network: &str, extra: &[&str]) -> anyhow::Result<()> {
        let cgroup = format!("--cgroup-parent=/{}podman", self.lab.sandbox_netns(i, ""));
        let mut args = vec!["run", "-d", "--name", name, "--network", network, "--dns", "127.0.0.11", &cgroup];
        args.extend(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]);
        args.extend(extra);
        args.extend([IMAGE, "sleep", CONTAINER_LIFETIME]);
        self.podman_ok(i, &args)?;
        Ok(())
    }
}

impl Drop for PodmanLab {
    fn drop(&mut self) {
        for i in self.ready.clone() {
            let _ = self.podman(i, &["rm", "-f", "-a", "-t", "0"]);
        }
    }
}
