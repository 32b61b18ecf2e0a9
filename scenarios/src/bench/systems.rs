//! The systems benchmarks compare: mesh, and HashiCorp Serf as the baseline.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};

use super::serf_rpc::SerfRpc;
use crate::lab::{host_ip, Lab};

/// Whether Debian's `serf` is installed.
pub(super) fn serf_installed() -> bool {
    crate::process::run("serf", ["version"]).is_ok_and(|o| o.success)
}

/// A membership system under test.
pub(super) trait System: Sync {
    fn name(&self) -> &'static str;
    /// Starts one agent per host, the first forming the cluster.
    fn start(&self, lab: &mut Lab) -> anyhow::Result<()>;
    /// Joins host `i` to host 1 (blocking until the command returns).
    fn join(&self, lab: &Lab, i: usize) -> anyhow::Result<()>;
    /// Names and statuses host `i` lists.
    fn view(&self, lab: &Lab, i: usize) -> anyhow::Result<Vec<(String, String)>>;
    /// Stops every agent.
    fn stop(&self, lab: &mut Lab) -> anyhow::Result<()>;
    /// The pid of host `i`'s agent.
    fn pid(&self, lab: &Lab, i: usize) -> Option<u32>;
    /// The status word for a failed member.
    fn down_word(&self) -> &'static str;
    /// Freezes (SIGSTOP) or thaws (SIGCONT) host `i`'s agent.
    fn freeze(&self, lab: &Lab, i: usize, frozen: bool) -> anyhow::Result<()>;
    /// The members host `i`'s agent has declared down so far, from its log.
    fn declared_down(&self, lab: &Lab, i: usize) -> anyhow::Result<Vec<String>>;
}

/// The names a log declares down: the word after each `marker`, up to `end`.
fn names_after(log: &std::path::Path, marker: &str, end: char) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once(marker))
        .filter_map(|(_, rest)| rest.split(end).next())
        .map(str::to_owned)
        .collect())
}

pub(super) struct Mesh;

impl System for Mesh {
    fn name(&self) -> &'static str {
        "mesh"
    }

    fn start(&self, lab: &mut Lab) -> anyhow::Result<()> {
        for i in 1..=lab.len() {
            lab.start_agent(i, &[])?;
        }
        lab.mesh_ok(1, &["init"])?;
        Ok(())
    }

    fn join(&self, lab: &Lab, i: usize) -> anyhow::Result<()> {
        let token = lab.mesh_ok(1, &["token"])?;
        lab.mesh_ok(i, &["join", &lab.agent_addr(1), "--token", token.trim()])?;
        Ok(())
    }

    fn view(&self, lab: &Lab, i: usize) -> anyhow::Result<Vec<(String, String)>> {
        Ok(lab.members_api(i)?.into_iter().map(|m| (m.name, m.status)).collect())
    }

    fn stop(&self, lab: &mut Lab) -> anyhow::Result<()> {
        for i in 1..=lab.len() {
            lab.kill(i)?;
        }
        Ok(())
    }

    fn pid(&self, lab: &Lab, i: usize) -> Option<u32> {
        lab.agent_pid(i)
    }

    fn down_word(&self) -> &'static str {
        "down"
    }

    fn freeze(&self, lab: &Lab, i: usize, frozen: bool) -> anyhow::Result<()> {
        lab.freeze(i, frozen)
    }

    /// From the agent's `member down member=h3(...)` lines.
    fn declared_down(&self, lab: &Lab, i: usize) -> anyhow::Result<Vec<String>> {
        names_after(&lab.host_dir(i).join("agent.log"), "member down member=", '(')
    }
}

/// HashiCorp Serf, with extra agent flags (an event handler, say), watched
/// through its RPC.
#[derive(Default)]
pub(super) struct Serf {
    extra: Vec<String>,
    /// One RPC session per host, opened at its first look.
    sessions: Mutex<HashMap<usize, SerfRpc>>,
}

/// The RPC address flag of every Serf agent and client (port `serf_rpc::RPC_PORT`).
pub(super) const SERF_RPC: &str = "-rpc-addr=127.0.0.1:7373";

impl Serf {
    /// Serf with extra agent flags.
    pub(super) fn with_flags(extra: Vec<String>) -> Self {
        Self { extra, sessions: Mutex::default() }
    }

    /// Serf logging its verdicts (info level), for [`System::declared_down`].
    pub(super) fn logging_verdicts() -> Self {
        Self::with_flags(vec!["-log-level=info".into()])
    }

    /// Starts the Serf agent of host `i` (without waiting for it).
    pub(super) fn start_one(&self, lab: &mut Lab, i: usize) -> anyhow::Result<()> {
        let (node, bind) = (format!("-node=h{i}"), format!("-bind={}:7946", host_ip(i)));
        let mut args = vec!["agent", &node, &bind, SERF_RPC, "-log-level=err"];
        args.extend(self.extra.iter().map(String::as_str));
        lab.spawn(i, "serf", "serf", &args)
    }
}

impl System for Serf {
    fn name(&self) -> &'static str {
        "serf"
    }

    fn start(&self, lab: &mut Lab) -> anyhow::Result<()> {
        for i in 1..=lab.len() {
            self.start_one(lab, i)?;
        }
        lab.wait_for("serf agents to answer", Duration::from_secs(10), |lab| {
            (1..=lab.len()).try_fold(true, |ok, i| Ok(ok && self.view(lab, i).is_ok()))
        })?;
        Ok(())
    }

    /// Retried for a while: a Serf agent just started may not answer its
    /// RPC yet.
    fn join(&self, lab: &Lab, i: usize) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = lab.exec(i, "serf", &["join", SERF_RPC, &format!("{}:7946", host_ip(1))])?;
            if out.success {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("serf join on h{i}: {} {}", out.stdout.trim(), out.stderr.trim());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Through host `i`'s RPC session (opened if need be; dropped on error).
    fn view(&self, lab: &Lab, i: usize) -> anyhow::Result<Vec<(String, String)>> {
        let taken = self.sessions.lock().unwrap_or_else(PoisonError::into_inner).remove(&i);
        let mut session = match taken {
            Some(session) => session,
            None => SerfRpc::connect(&Path::new("/run/netns").join(lab.netns(i)))?,
        };
        let members = session.members().with_context(|| format!("serf members on h{i}"))?;
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(i, session);
        Ok(members)
    }

    fn stop(&self, lab: &mut Lab) -> anyhow::Result<()> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).clear();
        lab.kill_spawned();
        Ok(())
    }

    fn pid(&self, lab: &Lab, i: usize) -> Option<u32> {
        lab.spawned_pids(i).first().copied()
    }

    fn down_word(&self) -> &'static str {
        "failed"
    }

    fn freeze(&self, lab: &Lab, i: usize, frozen: bool) -> anyhow::Result<()> {
        let pid = self.pid(lab, i).with_context(|| format!("no serf agent on h{i}"))?;
        crate::lab::freeze_process(pid, frozen)
    }

    /// From `serf: EventMemberFailed: h3 198.18.0.3` lines, which Serf logs
    /// at `-log-level=info` (see [`Serf::logging_verdicts`]).
    fn declared_down(&self, lab: &Lab, i: usize) -> anyhow::Result<Vec<String>> {
        names_after(&lab.spawn_log(i, "serf"), "EventMemberFailed: ", ' ')
    }
}
