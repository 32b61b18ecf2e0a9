//! A real `dockerd` (Debian's docker.io) in lab hosts: each in its host's
//! network namespace (entered with `nsenter`, so it keeps the machine's
//! /sys) and in a private mount namespace whose `/run/docker/plugins` is
//! the host agent's plugin directory, with its own data and exec roots.
//! No registry is reachable: the image is busybox-static, imported.
//!
//! [`DockerLab`] removes its containers and stops its engines before the
//! lab itself goes, pass or fail.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub use crate::image::{busybox_image, CONTAINER_LIFETIME, IMAGE};
use crate::lab::Lab;
use crate::process::{run, Output};

/// A lab whose hosts run dockerd.
pub struct DockerLab {
    lab: Lab,
    engines: Vec<usize>,
}

impl Deref for DockerLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl DerefMut for DockerLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

impl DockerLab {
    /// Wraps `lab`; no engine runs yet.
    pub fn new(lab: Lab) -> anyhow::Result<Self> {
        if run("dockerd", ["--version"]).is_err() {
            bail!("dockerd is not installed: apt-get install docker.io (the README's test command does)");
        }
        Ok(Self { lab, engines: Vec::new() })
    }

    fn root(&self, i: usize) -> PathBuf {
        self.lab.host_dir(i).join("docker")
    }

    /// Starts host `i`'s dockerd (with `extra` flags) and waits until it
    /// answers; imports [`IMAGE`] on first start.
    pub fn start_dockerd(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        let root = self.root(i);
        for dir in ["data", "exec"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        std::fs::create_dir_all(self.lab.docker_plugin_dir(i))?;
        let socket = self.lab.docker_socket(i);
        let _ = std::fs::remove_file(&socket);
        let mount_ns = self.mount_namespace(i)?;
        let prefix = self.lab.sandbox_netns(i, "");
        let (data, exec, pidfile) = (root.join("data"), root.join("exec"), root.join("dockerd.pid"));
        let mut args: Vec<String> = vec![
            format!("--mount={mount_ns}"),
            "dockerd".into(),
            "--iptables=false".into(),
            "--ip6tables=false".into(),
            "--bridge=none".into(),
            "--storage-driver=vfs".into(),
            format!("--data-root={}", data.display()),
            format!("--exec-root={}", exec.display()),
            format!("--pidfile={}", pidfile.display()),
            format!("--host=unix://{}", socket.display()),
            format!("--containerd-namespace={prefix}c"),
            format!("--containerd-plugins-namespace={prefix}p"),
            // Named for the lab, so `mesh-lab clean` finds the containers of a killed run.
            format!("--cgroup-parent=/{prefix}docker"),
        ];
        args.extend(extra.iter().map(|flag| (*flag).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lab.spawn(i, "dockerd", "nsenter", &args)?;
        if !self.engines.contains(&i) {
            self.engines.push(i);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker(i, &["version"])?.success {
            if Instant::now() > deadline {
                bail!("dockerd on h{i} did not answer in 60 s: {}", self.dockerd_log(i));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !self.docker(i, &["image", "inspect", IMAGE])?.success {
            let image = busybox_image(&self.lab)?;
            self.docker_ok(i, &["import", image.to_str().context("path is not UTF-8")?, IMAGE])?;
        }
        Ok(())
    }

    /// The mount namespace host `i`'s dockerd runs in (made on first use):
    /// private, with the agent's plugin directory as `/run/docker/plugins`.
    /// A process holds it, so the container namespaces dockerd mounts in
    /// it outlive a restart of dockerd (`--live-restore`).
    fn mount_namespace(&mut self, i: usize) -> anyhow::Result<String> {
        let pidfile = self.root(i).join("mount-holder.pid");
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            return Ok(format!("/proc/{}/ns/mnt", pid.trim()));
        }
        let script = format!(
            "mount --make-rprivate / && mkdir -p /run/docker/plugins && mount --bind {plugins} /run/docker/plugins \
             && echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile} && exec sleep 100000",
            plugins = self.lab.docker_plugin_dir(i).display(),
            pidfile = pidfile.display(),
        );
        self.lab.spawn(i, "mount-holder", "unshare", &["-m", "sh", "-c", &script])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(pid) = std::fs::read_to_string(&pidfile) {
                return Ok(format!("/proc/{}/ns/mnt", pid.trim()));
            }
            if Instant::now() > deadline {
                bail!(
                    "no mount namespace for h{i}'s dockerd: {:?}",
                    std::fs::read_to_string(self.lab.spawn_log(i, "mount-holder"))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops host `i`'s dockerd (SIGTERM; its containers keep running if
    /// it was started with `--live-restore`) and waits until it is gone.
    pub fn stop_dockerd(&mut self, i: usize) -> anyhow::Result<()> {
        let pidfile = self.root(i).join("dockerd.pid");
        let pid = std::fs::read_to_string(&pidfile).context("dockerd has no pidfile")?.trim().to_owned();
        run("kill", ["-TERM", &pid])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(&pid) {
            if Instant::now() > deadline {
                bail!("dockerd on h{i} did not stop in 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// [`Lab::wait_for`], with checks that can ask the engines.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Duration> {
        self.lab.wait_for(what, timeout, |_| check(self))
    }

    /// `docker ARGS` against host `i`'s engine.
    pub fn docker(&self, i: usize, args: &[&str]) -> anyhow::Result<Output> {
        let host = format!("unix://{}", self.lab.docker_socket(i).display());
        let mut all = vec!["-H", host.as_str()];
        all.extend(args);
        run("docker", all)
    }

    /// `docker ARGS` that must succeed; returns its stdout.
    pub fn docker_ok(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let out = self.docker(i, args)?;
        if !out.success {
            bail!("`docker {}` on h{i} failed: {}", args.join(" "), out.stderr.trim());
        }
        Ok(out.stdout)
    }

    /// The last lines of host `i`'s dockerd log.
    pub fn dockerd_log(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.lab.spawn_log(i, "dockerd")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn is_zombie(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

impl Drop for DockerLab {
    fn drop(&mut self) {
        for i in self.engines.clone() {
            if let Ok(ids) = self.docker(i, &["ps", "-aq"]) {
                let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = self.docker(i, &args);
                }
            }
            let _ = self.stop_dockerd(i);
        }
    }
}
