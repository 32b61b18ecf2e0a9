//! The lab itself: namespaces, the underlay, agents, and faults.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::cpu_quota::CpuQuota;
use crate::process::{must, require_root, run, Output};

/// The port agents listen on in the lab.
pub const AGENT_PORT: u16 = 7950;
/// Prefix of every lab's namespaces; `mesh-lab clean` looks for it.
pub(crate) const PREFIX: &str = "mlab-";

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

/// One member as `mesh members --format json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    /// Node name.
    pub name: String,
    /// Agent address.
    pub addr: String,
    /// `alive`, `suspect`, `down` or `left`.
    pub status: String,
}

struct Host {
    netns: String,
    dir: PathBuf,
    agent: Option<Child>,
    /// Other processes started in this host (baselines such as serf).
    others: Vec<Child>,
}

impl Host {
    /// The log files of the processes started besides the agent.
    fn others_logs(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.ends_with(".log") && name != "agent.log")
            .collect()
    }
}

/// N hosts on an underlay bridge. Host numbers start at 1 (`h1`).
pub struct Lab {
    prefix: String,
    underlay: String,
    hosts: Vec<Host>,
    mesh: PathBuf,
    dir: tempfile::TempDir,
    /// Set when a wait timed out, so the logs are shown even when the test
    /// returns its error instead of panicking.
    failed: std::sync::atomic::AtomicBool,
}

/// Freezes (SIGSTOP) or thaws (SIGCONT) process `pid`.
pub(crate) fn freeze_process(pid: u32, frozen: bool) -> anyhow::Result<()> {
    must("kill", [if frozen { "-STOP" } else { "-CONT" }, &pid.to_string()])?;
    Ok(())
}

/// The nftables table [`Lab::set_loss`] puts in a host.
const LOSS_TABLE: &str = "meshlab_loss";

/// The "outside" router's address (see [`Lab::attach_outside`]).
pub const OUTSIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);

/// The address of host `i` on the outside network (see [`Lab::attach_outside`]).
pub fn outside_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, u8::try_from(i).unwrap_or(u8::MAX))
}

/// The underlay address of host `i` (1-based): 198.18.0.1, 198.18.0.2, ...
pub fn host_ip(i: usize) -> Ipv4Addr {
    let n = u32::try_from(i.saturating_sub(1)).unwrap_or(u32::MAX);
    Ipv4Addr::new(198, 18, u8::try_from(n / 250).unwrap_or(u8::MAX), u8::try_from(n % 250 + 1).unwrap_or(u8::MAX))
}

impl Lab {
    /// Builds a lab of `n` hosts (no agents yet).
    pub fn new(n: usize) -> anyhow::Result<Self> {
        require_root()?;
        let mesh = mesh_binary()?;
        clean_leftovers(Leftovers::OfDeadRuns)?;
        ensure_neighbour_capacity(n)?;
        let prefix = format!("{PREFIX}{}-{}-", std::process::id(), NEXT_LAB.fetch_add(1, Ordering::Relaxed));
        let underlay = format!("{prefix}ul");
        let dir = tempfile::Builder::new().prefix("mesh-lab-").tempdir()?;
        let mut lab =
            Self { prefix, underlay, hosts: Vec::new(), mesh, dir, failed: std::sync::atomic::AtomicBool::new(false) };
        must("ip", ["netns", "add", &lab.underlay])?;
        must("ip", ["-n", &lab.underlay, "link", "add", "br0", "type", "bridge"])?;
        must("ip", ["-n", &lab.underlay, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            lab.add_host(i)?;
        }
        Ok(lab)
    }

    fn add_host(&mut self, i: usize) -> anyhow::Result<()> {
        let netns = format!("{}h{i}", self.prefix);
        let dir = self.dir.path().join(format!("h{i}"));
        std::fs::create_dir_all(&dir)?;
        must("ip", ["netns", "add", &netns])?;
        self.hosts.push(Host { netns: netns.clone(), dir, agent: None, others: Vec::new() });
        let port = format!("u{i}");
        must("ip", ["-n", &netns, "link", "set", "lo", "up"])?;
        must(
            "ip",
            ["link", "add", &port, "netns", &self.underlay, "type", "veth", "peer", "name", "eth0", "netns", &netns],
        )?;
        must("ip", ["-n", &self.underlay, "link", "set", &port, "master", "br0", "up"])?;
        must("ip", ["-n", &netns, "addr", "add", &format!("{}/15", host_ip(i)), "dev", "eth0"])?;
        must("ip", ["-n", &netns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Attaches an "outside" namespace to host `i`, as its default route:
    /// a link `out0` in the host with [`outside_ip`]`(i)`/24, to the outside's
    /// `eth0` with [`OUTSIDE_ROUTER`] (TEST-NET-3, never routed off the
    /// machine). The outside knows no route to the lab's other networks, so
    /// what reaches it from a sandbox and is answered was masqueraded.
    /// Answers the outside's namespace (removed with the lab).
    pub fn attach_outside(&self, i: usize) -> anyhow::Result<String> {
        let (outside, host) = (format!("{}out{i}", self.prefix), self.netns(i));
        must("ip", ["netns", "add", &outside])?;
        must("ip", ["link", "add", "out0", "netns", host, "type", "veth", "peer", "name", "eth0", "netns", &outside])?;
        must("ip", ["-n", &outside, "addr", "add", &format!("{OUTSIDE_ROUTER}/24"), "dev", "eth0"])?;
        must("ip", ["-n", host, "addr", "add", &format!("{}/24", outside_ip(i)), "dev", "out0"])?;
        for (netns, link) in [(outside.as_str(), "eth0"), (outside.as_str(), "lo"), (host, "out0")] {
            must("ip", ["-n", netns, "link", "set", link, "up"])?;
        }
        must("ip", ["-n", host, "route", "add", "default", "via", &OUTSIDE_ROUTER.to_string()])?;
        Ok(outside)
    }

    /// Runs a command inside the lab's namespace `netns` (an outside's).
    pub fn exec_in(&self, netns: &str, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["netns", "exec", netns, program];
        all.extend(args);
        let out = run("ip", all)?;
        // A program that cannot start is the lab's error, not its exit code:
        // a missing `ping` must not read as "no answer".
        if !out.success && out.stderr.contains(&format!("exec of \"{program}\" failed")) {
            bail!("cannot run {program} in {netns} (is it installed?): {}", out.stderr.trim());
        }
        Ok(out)
    }

    /// A lab of `hosts` hosts, `mesh init` on host 1, `mesh join` on the
    /// others, once every host lists every host alive (within 30 s).
    pub fn converged(hosts: usize) -> anyhow::Result<Self> {
        let mut lab = Self::new(hosts)?;
        lab.form_cluster()?;
        lab.wait_for("all alive", Duration::from_secs(30), Self::all_alive)?;
        Ok(lab)
    }

    /// Whether every host lists every host, all alive.
    pub fn all_alive(&self) -> anyhow::Result<bool> {
        for i in 1..=self.len() {
            let members = self.members_api(i)?;
            if members.len() != self.len() || members.iter().any(|m| m.status != "alive") {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether the lab has no hosts.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The network namespace of host `i`.
    pub fn netns(&self, i: usize) -> &str {
        &self.host(i).netns
    }

    /// The control socket of host `i`'s agent.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.host(i).dir.join("mesh.sock")
    }

    /// The data dir of host `i`'s agent.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.host(i).dir.join("data")
    }

    /// Where host `i`'s agent puts its Docker plugin socket (the lab's
    /// dockerd of that host sees it as `/run/docker/plugins`).
    pub fn docker_plugin_dir(&self, i: usize) -> PathBuf {
        self.host(i).dir.join("docker-plugins")
    }

    /// The API socket of host `i`'s dockerd, if the test starts one.
    pub fn docker_socket(&self, i: usize) -> PathBuf {
        self.host(i).dir.join("docker.sock")
    }

    /// The `mesh` binary the lab runs.
    pub fn mesh_path(&self) -> &Path {
        &self.mesh
    }

    /// The directory of host `i`'s own files (logs, data dir, dockerd's).
    pub fn host_dir(&self, i: usize) -> &Path {
        &self.host(i).dir
    }

    /// The agent address of host `i`.
    pub fn agent_addr(&self, i: usize) -> String {
        format!("{}:{AGENT_PORT}", host_ip(i))
    }

    fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    fn host_mut(&mut self, i: usize) -> &mut Host {
        &mut self.hosts[i - 1]
    }

    /// Starts host `i`'s agent with extra flags and waits for its control
    /// socket. Its data dir survives restarts.
    pub fn start_agent(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        self.start_agent_under(i, &[], extra)
    }

    /// [`Lab::start_agent`], with the agent run by `wrapper` (a program
    /// and its arguments, e.g. `setpriv` dropping capabilities).
    pub fn start_agent_under(&mut self, i: usize, wrapper: &[&str], extra: &[&str]) -> anyhow::Result<()> {
        let mesh = self.mesh.clone();
        self.start_agent_as(i, &mesh, wrapper, extra)
    }

    /// [`Lab::start_agent_under`] with another `mesh` binary (another
    /// release, for upgrades).
    pub fn start_agent_as(&mut self, i: usize, mesh: &Path, wrapper: &[&str], extra: &[&str]) -> anyhow::Result<()> {
        let host = self.host(i);
        let log = File::options().create(true).append(true).open(host.dir.join("agent.log"))?;
        let socket = self.socket(i);
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "nsenter", &format!("--net=/run/netns/{}", host.netns)])
            .args(wrapper)
            .arg(mesh)
            .args(["agent", "--name", &format!("h{i}"), "--data-dir"])
            .arg(self.data_dir(i))
            .arg("--socket")
            .arg(&socket)
            .args(["--netns-prefix", &self.sandbox_netns(i, "")])
            .arg("--docker-plugin-dir")
            .arg(self.docker_plugin_dir(i))
            .arg("--docker-socket")
            .arg(self.docker_socket(i))
            .args(extra)
            .env("RUST_LOG", std::env::var("MESH_LAB_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the agent")?;
        self.host_mut(i).agent = Some(child);
        // Generous: in the kernel VM (emulated) the namespaces a previous
        // lab left are torn down holding the kernel's rtnl lock for seconds.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Some(status) = self.host_mut(i).agent.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("agent h{i} exited at start ({status}): {}", self.log_tail(i, 20));
            }
            if Instant::now() > deadline {
                bail!("agent h{i} did not open its control socket in 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Starts every agent, runs `mesh init` on host 1 and `mesh join` on the
    /// others, and returns the join token.
    pub fn form_cluster(&mut self) -> anyhow::Result<String> {
        self.form_cluster_with(&[])
    }

    /// [`Lab::form_cluster`] with extra agent flags.
    pub fn form_cluster_with(&mut self, extra: &[&str]) -> anyhow::Result<String> {
        for i in 1..=self.len() {
            self.start_agent(i, extra)?;
        }
        let token = self.mesh_ok(1, &["init"])?.trim().to_owned();
        let peer = self.agent_addr(1);
        for i in 2..=self.len() {
            self.mesh_ok(i, &["join", &peer, "--token", &token])?;
        }
        Ok(token)
    }

    /// Runs a `mesh` client command against host `i`'s agent.
    pub fn mesh(&self, i: usize, args: &[&str]) -> anyhow::Result<Output> {
        let socket = self.socket(i);
        let mut all: Vec<&str> = args.to_vec();
        // Before `--`, after which everything belongs to `mesh run`'s command.
        let at = all.iter().position(|a| *a == "--").unwrap_or(all.len());
        all.splice(at..at, ["--socket", socket.to_str().context("socket path is not UTF-8")?]);
        run(self.mesh.to_str().context("mesh path is not UTF-8")?, all)
    }

    /// Runs a `mesh` client command that must succeed; returns its stdout.
    pub fn mesh_ok(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let out = self.mesh(i, args)?;
        if !out.success {
            bail!("`mesh {}` on h{i} failed: {}", args.join(" "), out.stderr.trim());
        }
        Ok(out.stdout)
    }

    /// Runs a command inside host `i`'s network namespace.
    pub fn exec(&self, i: usize, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.exec_in(self.netns(i), program, args)
    }

    /// The namespace host `i`'s agent gives sandbox `name`: the lab's
    /// agents share the machine's `/run/netns`, so each prefixes its own.
    pub fn sandbox_netns(&self, i: usize, name: &str) -> String {
        format!("{}-{name}", self.netns(i))
    }

    /// Runs a command inside sandbox `name` of host `i`, as `ip netns
    /// exec` does (with the sandbox's own resolv.conf, if it has one).
    pub fn sandbox_exec(&self, i: usize, name: &str, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.exec_in(&self.sandbox_netns(i, name), program, args)
    }

    /// Starts a long-running process in host `i`'s namespace; it is killed
    /// with the lab. Its output goes to `NAME.log` in the host's directory.
    pub fn spawn(&mut self, i: usize, name: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let netns = self.netns(i).to_owned();
        self.spawn_in(i, &netns, name, program, args)
    }

    /// Like [`Lab::spawn`], in namespace `netns` (a sandbox of host `i`).
    pub fn spawn_in(&mut self, i: usize, netns: &str, name: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let log = File::create(self.spawn_log(i, name))?;
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "nsenter", &format!("--net=/run/netns/{netns}"), program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        self.host_mut(i).others.push(child);
        Ok(())
    }

    /// Kills every process started with [`Lab::spawn`].
    pub fn kill_spawned(&mut self) {
        for host in &mut self.hosts {
            for mut child in host.others.drain(..) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// `mesh members --format json` as host `i` sees it.
    pub fn members(&self, i: usize) -> anyhow::Result<Vec<Member>> {
        let out = self.mesh_ok(i, &["members", "--format", "json"])?;
        serde_json::from_str(&out).with_context(|| format!("bad members JSON: {out}"))
    }

    /// The members host `i` sees, read straight from its control API: the
    /// same data as [`Lab::members`] without starting a process, for
    /// watchers that poll many hosts at once.
    pub fn members_api(&self, i: usize) -> anyhow::Result<Vec<Member>> {
        members_at(&self.socket(i))
    }

    /// The status host `observer` gives the member named `name`, if listed.
    pub fn status_of(&self, observer: usize, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self.members(observer)?.into_iter().find(|m| m.name == name).map(|m| m.status))
    }

    /// Kills host `i`'s agent with SIGKILL.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.host_mut(i).agent.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM to host `i`'s agent and waits for it to exit.
    pub fn terminate(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.host_mut(i).agent.take() {
            must("kill", ["-TERM", &child.id().to_string()])?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    child.kill()?;
                    bail!("agent h{i} did not stop within 10 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) host `i`'s agent.
    pub fn freeze(&self, i: usize, frozen: bool) -> anyhow::Result<()> {
        freeze_process(self.host(i).agent.as_ref().context("no agent running")?.id(), frozen)
    }

    /// Holds host `i`'s agent to `percent` % of one CPU until the returned
    /// quota is dropped (see [`CpuQuota`]).
    pub fn starve_cpu(&self, i: usize, percent: u32) -> anyhow::Result<CpuQuota> {
        let pid = self.host(i).agent.as_ref().context("no agent running")?.id();
        CpuQuota::new(&format!("{}h{i}-cpu", self.prefix), pid, percent)
    }

    /// Cuts host `i` off the underlay (its port leaves the bridge; its own
    /// link stays up, as when a switch port or cable fails), or reconnects it.
    pub fn cut(&self, i: usize, cut: bool) -> anyhow::Result<()> {
        let port = format!("u{i}");
        let how: &[&str] = if cut { &["nomaster"] } else { &["master", "br0"] };
        let mut args = vec!["-n", &self.underlay, "link", "set", &port];
        args.extend(how);
        must("ip", args)?;
        Ok(())
    }

    /// Drops `percent` % of the packets host `i` receives on its underlay
    /// link, at random (nftables `numgen random`, since this kernel has no
    /// netem); 0 removes the rule, 100 drops everything.
    pub fn set_loss(&self, i: usize, percent: u32) -> anyhow::Result<()> {
        let netns = &self.host(i).netns;
        let _ = run("ip", ["netns", "exec", netns, "nft", "delete", "table", "inet", LOSS_TABLE]);
        if percent == 0 {
            return Ok(());
        }
        let nft = |command: String| must("ip", ["netns", "exec", netns, "nft", &command]);
        nft(format!("add table inet {LOSS_TABLE}"))?;
        nft(format!("add chain inet {LOSS_TABLE} input {{ type filter hook input priority -300 ; }}"))?;
        // `numgen random mod 100` is 0-99: `lt 100` is out of its range.
        let share = if percent >= 100 { String::new() } else { format!("numgen random mod 100 lt {percent} ") };
        nft(format!("add rule inet {LOSS_TABLE} input iifname eth0 {share}drop"))?;
        Ok(())
    }

    /// Bytes host `i` has sent on its underlay link so far.
    pub fn underlay_sent_bytes(&self, i: usize) -> anyhow::Result<u64> {
        let out = must("ip", ["-n", &self.host(i).netns, "-j", "-s", "link", "show", "eth0"])?;
        let links: serde_json::Value = serde_json::from_str(&out).context("bad `ip -j -s link` JSON")?;
        links[0]["stats64"]["tx"]["bytes"].as_u64().context("no tx bytes in `ip -j -s link`")
    }

    /// Splits the underlay in two: the hosts in `side` move to a bridge of
    /// their own and reach only each other; the rest stay together.
    pub fn partition(&self, side: &[usize]) -> anyhow::Result<()> {
        let exists = run("ip", ["-n", &self.underlay, "link", "show", "br1"])?.success;
        if !exists {
            must("ip", ["-n", &self.underlay, "link", "add", "br1", "type", "bridge"])?;
            must("ip", ["-n", &self.underlay, "link", "set", "br1", "up"])?;
        }
        for &i in side {
            must("ip", ["-n", &self.underlay, "link", "set", &format!("u{i}"), "master", "br1"])?;
        }
        Ok(())
    }

    /// Puts every host back on one underlay bridge.
    pub fn heal(&self) -> anyhow::Result<()> {
        for i in 1..=self.len() {
            must("ip", ["-n", &self.underlay, "link", "set", &format!("u{i}"), "master", "br0"])?;
        }
        Ok(())
    }

    /// Host `i`'s FDB entries (`MAC dst IP`) and permanent neighbour
    /// addresses on VXLAN device `device`, as `bridge` and `ip` list them.
    pub fn vxlan_tables(&self, i: usize, device: &str) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
        let fdb = self.exec(i, "bridge", &["fdb", "show", "dev", device])?.stdout;
        let neigh = self.exec(i, "ip", &["neigh", "show", "dev", device])?.stdout;
        let fdb = fdb
            .lines()
            .filter_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let dst = words.iter().position(|w| *w == "dst")?;
                Some(format!("{} dst {}", words.first()?, words.get(dst + 1)?))
            })
            .collect();
        let neigh = neigh
            .lines()
            .filter(|l| l.contains("PERMANENT"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        Ok((fdb, neigh))
    }

    /// The process id of host `i`'s agent, if running.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.host(i).agent.as_ref().map(Child::id)
    }

    /// The log file of what [`Lab::spawn`] started as `name` in host `i`.
    pub fn spawn_log(&self, i: usize, name: &str) -> PathBuf {
        self.host(i).dir.join(format!("{name}.log"))
    }

    /// The process ids of what [`Lab::spawn`] started in host `i`.
    pub fn spawned_pids(&self, i: usize) -> Vec<u32> {
        self.host(i).others.iter().map(Child::id).collect()
    }

    /// The last `lines` lines of host `i`'s agent log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.host(i).dir.join("agent.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Polls `check` every 50 ms until it returns true, for at most
    /// `timeout`; returns how long it took. An error from `check` is retried.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut last_error = None;
        while start.elapsed() < timeout {
            match check(self) {
                Ok(true) => return Ok(start.elapsed()),
                Ok(false) => last_error = None,
                Err(error) => last_error = Some(error),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.failed.store(true, Ordering::Relaxed);
        match last_error {
            Some(error) => bail!("timed out after {timeout:?} waiting for {what}: {error:#}"),
            None => bail!("timed out after {timeout:?} waiting for {what}"),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() || self.failed.load(Ordering::Relaxed) {
            for i in 1..=self.len() {
                eprintln!("---- agent log h{i} (last 30 lines) ----\n{}", self.log_tail(i, 30));
            }
        }
        self.kill_spawned();
        if let Some(keep) = std::env::var_os("MESH_LAB_KEEP_LOGS") {
            let dest = Path::new(&keep).join(&self.prefix);
            let _ = std::fs::create_dir_all(&dest);
            for i in 1..=self.len() {
                let _ = std::fs::copy(self.host(i).dir.join("agent.log"), dest.join(format!("h{i}.log")));
                for name in self.host(i).others_logs() {
                    let _ = std::fs::copy(self.host(i).dir.join(&name), dest.join(format!("h{i}-{name}")));
                }
            }
        }
        for i in 1..=self.len() {
            let _ = self.kill(i);
        }
        // Hosts, their sandboxes and the underlay all carry the lab's prefix.
        let listing = run("ip", ["netns", "list"]).map(|o| o.stdout).unwrap_or_default();
        for name in listing.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with(&self.prefix) {
                let _ = run("ip", ["netns", "del", name]);
            }
        }
        remove_etc_dirs(|name| name.starts_with(&self.prefix));
    }
}

/// Removes the per-namespace `/etc/netns/NAME` directories (the agents'
/// resolv.conf files) whose name `doomed` accepts.
fn remove_etc_dirs(doomed: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir("/etc/netns") else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(&doomed) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Kills the processes in cgroups whose name `doomed` accepts: the
/// containers of a lab's dockerd (started with a cgroup parent named for
/// its host), which live in namespaces of their own.
fn kill_cgroups(doomed: impl Fn(&str) -> bool) {
    let Ok(processes) = std::fs::read_dir("/proc") else { return };
    for process in processes.flatten() {
        let pid = process.file_name();
        let Some(pid) = pid.to_str().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let cgroups = std::fs::read_to_string(process.path().join("cgroup")).unwrap_or_default();
        if cgroups.split(['/', '\n']).any(|part| part.starts_with(PREFIX) && doomed(part)) {
            let _ = run("kill", ["-KILL", pid]);
        }
    }
}

/// Whose labs [`clean_leftovers`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftovers {
    /// Labs whose process is gone.
    OfDeadRuns,
    /// Those, and this process's own labs (when it is being interrupted).
    AlsoOurs,
}

/// Removes namespaces and agents left by labs, as `which` says.
/// Returns the namespaces removed.
pub fn clean_leftovers(which: Leftovers) -> anyhow::Result<Vec<String>> {
    let me = std::process::id().to_string();
    let doomed = |name: &str| {
        let Some(rest) = name.strip_prefix(PREFIX) else { return false };
        let owner = rest.split('-').next().unwrap_or_default();
        let ours = owner == me;
        let alive = Path::new(&format!("/proc/{owner}")).exists();
        !((ours && which == Leftovers::OfDeadRuns) || (alive && !ours))
    };
    let listing = must("ip", ["netns", "list"])?;
    let mut removed = Vec::new();
    remove_etc_dirs(doomed);
    kill_cgroups(doomed);
    crate::cpu_quota::remove_cgroups(doomed);
    for name in listing.lines().filter_map(|l| l.split_whitespace().next()) {
        if !doomed(name) {
            continue;
        }
        for pid in run("ip", ["netns", "pids", name])?.stdout.split_whitespace() {
            let _ = run("kill", ["-KILL", pid]);
        }
        must("ip", ["netns", "del", name])?;
        removed.push(name.to_owned());
    }
    Ok(removed)
}

/// The members the agent at control socket `socket` sees (see [`Lab::members_api`]).
pub fn members_at(socket: &Path) -> anyhow::Result<Vec<Member>> {
    let body = crate::api::get(socket, "/v1/members")?;
    serde_json::from_str(&body).with_context(|| format!("bad members JSON: {body}"))
}

/// The kernel's ARP table is shared by every namespace and holds 1024
/// entries by default (`gc_thresh3`); a lab of N hosts needs about N² of
/// them (every host resolves every other), and past the limit sends fail
/// with ENOBUFS. Raises the limits (never lowers them) to fit `hosts`.
fn ensure_neighbour_capacity(hosts: usize) -> anyhow::Result<()> {
    const DIR: &str = "/proc/sys/net/ipv4/neigh/default";
    let needed = 4 * hosts * hosts + 1024;
    let current: usize = std::fs::read_to_string(format!("{DIR}/gc_thresh3"))?.trim().parse().unwrap_or(0);
    if current >= needed {
        return Ok(());
    }
    for (name, value) in [("gc_thresh3", needed), ("gc_thresh2", needed / 2), ("gc_thresh1", needed / 4)] {
        std::fs::write(format!("{DIR}/{name}"), value.to_string())
            .with_context(|| format!("cannot raise {DIR}/{name} for a {hosts}-host lab"))?;
    }
    Ok(())
}

/// Finds the `mesh` binary: `$MESH_BIN`, or next to the running executable
/// (cargo puts test binaries in `target/*/deps/`, binaries one level up).
fn mesh_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("MESH_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("mesh");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("cannot find the mesh binary next to {}: build it first (cargo build --bins) or set MESH_BIN", exe.display())
}

/// The `mesh` of the previous release (`scripts/build-previous.sh` builds
/// it into `target/previous/mesh`), or `MESH_PREVIOUS_BIN`.
pub fn previous_release_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("MESH_PREVIOUS_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("previous").join("mesh");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("no build of the previous release: run scripts/build-previous.sh (scripts/test.sh does) or set MESH_PREVIOUS_BIN")
}

/// On SIGINT, SIGTERM or SIGHUP, removes this run's labs (their agents die
/// with this process) and exits, so an interrupted run leaves nothing behind.
pub fn clean_up_on_signal() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("interrupted: removing the lab");
            let _ = clean_leftovers(Leftovers::AlsoOurs);
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}
