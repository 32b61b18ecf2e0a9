//! Membership scenarios: the real `mesh` binary on lab hosts, checked the
//! way an operator would, through `mesh members`. Needs root.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{ensure, Context};
use mesh_scenarios::{host_ip, members_at, Lab, AGENT_PORT};

/// Generous bound for convergence waits: a bound on the test, not a
/// performance claim (figures come from `mesh-lab bench-membership`).
const CONVERGE: Duration = Duration::from_secs(30);

/// Whether every host in `observers` lists `name` with `status`.
fn all_see(lab: &Lab, observers: &[usize], name: &str, status: &str) -> anyhow::Result<bool> {
    for &i in observers {
        if lab.status_of(i, name)?.as_deref() != Some(status) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn others(lab: &Lab, except: usize) -> Vec<usize> {
    (1..=lab.len()).filter(|&i| i != except).collect()
}

#[test]
fn five_hosts_init_and_join_and_every_host_lists_five_alive() -> anyhow::Result<()> {
    let mut lab = Lab::new(5)?;
    let token = lab.form_cluster()?;
    ensure!(
        token.starts_with("mesh1.") && !token.contains(char::is_whitespace),
        "init prints one token line: {token:?}"
    );
    lab.wait_for("all 5 alive everywhere", CONVERGE, Lab::all_alive)?;

    let members = lab.members(3)?;
    let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    ensure!(names == ["h1", "h2", "h3", "h4", "h5"], "members: {members:?}");
    ensure!(members.iter().any(|m| m.addr == format!("{}:{AGENT_PORT}", host_ip(4))), "addresses: {members:?}");

    let table = lab.mesh_ok(2, &["members"])?;
    ensure!(table.starts_with("NAME") && table.lines().count() == 6, "table:\n{table}");
    let status = lab.mesh_ok(2, &["status", "--format", "json"])?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    ensure!(status["cluster_size"] == 5 && status["state"] == "member" && status["name"] == "h2", "{status}");
    ensure!(lab.mesh_ok(4, &["token"])?.trim() == token, "every member prints the same token");
    Ok(())
}

#[test]
fn killed_agent_is_down_everywhere_and_restarting_it_brings_it_back() -> anyhow::Result<()> {
    let mut lab = Lab::converged(4)?;

    lab.kill(4)?;
    let survivors = others(&lab, 4);
    lab.wait_for("h4 down on h1-h3", CONVERGE, |lab| all_see(lab, &survivors, "h4", "down"))?;

    lab.start_agent(4, &[])?;
    lab.wait_for("all alive after restart", CONVERGE, Lab::all_alive)?;
    Ok(())
}

#[test]
fn cut_host_is_down_everywhere_and_comes_back_when_reconnected() -> anyhow::Result<()> {
    let lab = Lab::converged(4)?;

    lab.cut(4, true)?;
    let survivors = others(&lab, 4);
    lab.wait_for("h4 down on h1-h3", CONVERGE, |lab| all_see(lab, &survivors, "h4", "down"))?;
    lab.wait_for("h4 sees the others down", CONVERGE, |lab| {
        Ok(lab.members_api(4)?.iter().filter(|m| m.name != "h4").all(|m| m.status == "down"))
    })?;

    lab.cut(4, false)?;
    lab.wait_for("all alive after the link heals", CONVERGE, Lab::all_alive)?;
    Ok(())
}

#[test]
fn mesh_leave_and_sigterm_with_leave_on_terminate_show_left_not_down() -> anyhow::Result<()> {
    let mut lab = Lab::new(4)?;
    lab.form_cluster()?;
    lab.terminate(4)?;
    lab.start_agent(4, &["--leave-on-terminate"])?;
    lab.wait_for("all alive", CONVERGE, Lab::all_alive)?;

    lab.mesh_ok(3, &["leave"])?;
    lab.wait_for("h3 left on h1, h2, h4", CONVERGE, |lab| all_see(lab, &[1, 2, 4], "h3", "left"))?;
    let status: serde_json::Value = serde_json::from_str(&lab.mesh_ok(3, &["status", "--format", "json"])?)?;
    ensure!(status["state"] == "left", "h3 status after leave: {status}");

    lab.terminate(4)?;
    lab.wait_for("h4 left on h1, h2", CONVERGE, |lab| all_see(lab, &[1, 2], "h4", "left"))?;

    // A node that left does not come back by itself on restart.
    lab.start_agent(4, &[])?;
    // Longer than the 3 s period at which members announce to departed ones.
    std::thread::sleep(Duration::from_secs(4));
    ensure!(lab.status_of(1, "h4")?.as_deref() == Some("left"), "h4 rejoined by itself after leaving");
    // It comes back when asked.
    let token = lab.mesh_ok(1, &["token"])?;
    lab.mesh_ok(4, &["join", &lab.agent_addr(1), "--token", token.trim()])?;
    lab.wait_for("h4 alive again", CONVERGE, |lab| all_see(lab, &[1, 2, 4], "h4", "alive"))?;
    ensure!(all_see(&lab, &[1, 2], "h3", "left")?, "h3 must stay left: members re-announce to the departed");
    Ok(())
}

#[test]
fn sigterm_then_restart_within_two_seconds_is_never_seen_down() -> anyhow::Result<()> {
    let mut lab = Lab::converged(4)?;

    // Watch h4's status on h1-h3 every 20 ms through the whole restart.
    let sockets: Vec<PathBuf> = (1..=3).map(|i| lab.socket(i)).collect();
    let done = AtomicBool::new(false);
    let seen = Mutex::new(Vec::new());
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for socket in &sockets {
            let (done, seen) = (&done, &seen);
            scope.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let status = members_at(socket).ok().and_then(|m| m.into_iter().find(|m| m.name == "h4"));
                    if let Some(member) = status {
                        seen.lock().unwrap_or_else(PoisonError::into_inner).push(member.status);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        let result = (|| {
            lab.terminate(4)?;
            lab.start_agent(4, &[])?;
            lab.wait_for("h4 back in its own view", CONVERGE, |lab| {
                Ok(lab.members_api(4)?.iter().filter(|m| m.status == "alive").count() == 4)
            })?;
            // Outlast the failure detector (suspicion is about 4 s here).
            std::thread::sleep(Duration::from_secs(8));
            lab.wait_for("all alive", CONVERGE, Lab::all_alive)
        })();
        done.store(true, Ordering::Relaxed);
        result.map(|_| ())
    })?;
    let seen = seen.into_inner().unwrap_or_else(PoisonError::into_inner);
    ensure!(seen.len() > 100, "the watchers saw too little: {}", seen.len());
    let bad: Vec<&String> = seen.iter().filter(|s| *s == "down" || *s == "left").collect();
    ensure!(bad.is_empty(), "h4 was seen {bad:?} during a quick restart");
    Ok(())
}

#[test]
fn wrong_tokens_are_refused_clearly_and_garbage_packets_change_nothing() -> anyhow::Result<()> {
    let mut lab = Lab::new(3)?;
    for i in 1..=3 {
        lab.start_agent(i, &[])?;
    }
    let token = lab.mesh_ok(1, &["init"])?.trim().to_owned();
    let peer = lab.agent_addr(1);
    lab.mesh_ok(2, &["join", &peer, "--token", &token])?;

    // Right cluster, wrong secret.
    let (fingerprint, _) = token.rsplit_once('.').context("token has parts")?;
    let wrong_secret = format!("{fingerprint}.{}", "A".repeat(43));
    let out = lab.mesh(3, &["join", &peer, "--token", &wrong_secret])?;
    ensure!(!out.success && out.stderr.contains("not valid for this cluster"), "wrong secret: {out:?}");
    // A token of another cluster: the joiner refuses the peer.
    let other_ca = format!("mesh1.{}.{}", "A".repeat(43), "A".repeat(43));
    let out = lab.mesh(3, &["join", &peer, "--token", &other_ca])?;
    ensure!(!out.success && out.stderr.contains("not a member of the cluster this token is for"), "other CA: {out:?}");
    // Not a token at all.
    let out = lab.mesh(3, &["join", &peer, "--token", "hunter2"])?;
    ensure!(!out.success && out.stderr.contains("mesh1."), "garbage token: {out:?}");
    let out = lab.mesh(3, &["members"])?;
    ensure!(!out.success && out.stderr.contains("not in a cluster"), "h3 must not be a member: {out:?}");

    // Random bytes at the agent's port, some shaped like QUIC long headers.
    let flood = format!(
        "for i in $(seq 1 300); do head -c $((RANDOM % 1400 + 1)) /dev/urandom > /dev/udp/{ip}/{AGENT_PORT}; \
         (printf '\\xc0\\x00\\x00\\x00\\x01'; head -c 1200 /dev/urandom) > /dev/udp/{ip}/{AGENT_PORT}; done",
        ip = host_ip(1)
    );
    let out = lab.exec(3, "bash", &["-c", &flood])?;
    ensure!(out.success, "flood: {out:?}");

    lab.wait_for("h1 and h2 alive, h3 absent", CONVERGE, |lab| {
        [1, 2].into_iter().try_fold(true, |ok, i| {
            let members = lab.members_api(i)?;
            Ok(ok && members.len() == 2 && members.iter().all(|m| m.status == "alive"))
        })
    })?;
    // After all that, the right token works.
    lab.mesh_ok(3, &["join", &peer, "--token", &token])?;
    lab.wait_for("all alive", CONVERGE, Lab::all_alive)?;
    Ok(())
}

#[test]
fn agents_booting_with_join_retry_until_the_peer_is_up() -> anyhow::Result<()> {
    let mut lab = Lab::new(3)?;
    lab.start_agent(1, &[])?;
    let token = lab.mesh_ok(1, &["init"])?.trim().to_owned();
    lab.terminate(1)?;

    // h2 and h3 boot while h1 is down, pointed at h1 and at each other.
    let (h1, h2, h3) = (lab.agent_addr(1), lab.agent_addr(2), lab.agent_addr(3));
    lab.start_agent(2, &["--join", &h1, "--join", &h3, "--token", &token])?;
    lab.start_agent(3, &["--join", &h1, "--join", &h2, "--token", &token])?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(lab.mesh(2, &["members"])?.stderr.contains("not in a cluster"), "h2 cannot have joined yet");

    lab.start_agent(1, &[])?;
    lab.wait_for("all three alive", CONVERGE, Lab::all_alive)?;
    Ok(())
}

#[test]
fn frozen_agent_is_declared_down_and_rejoins_by_itself_when_thawed() -> anyhow::Result<()> {
    let lab = Lab::converged(3)?;

    lab.freeze(3, true)?;
    lab.wait_for("h3 down on h1, h2", CONVERGE, |lab| all_see(lab, &[1, 2], "h3", "down"))?;
    lab.freeze(3, false)?;
    // h3 learns it was declared down and comes back with a new incarnation.
    lab.wait_for("all alive after the thaw", CONVERGE, Lab::all_alive)?;
    Ok(())
}

/// The members host `i`'s agent has declared down, from its log.
fn verdicts(lab: &Lab, i: usize) -> anyhow::Result<Vec<String>> {
    let log = std::fs::read_to_string(lab.host_dir(i).join("agent.log"))?;
    Ok(log
        .lines()
        .filter_map(|line| line.split_once("member down member=")?.1.split('(').next().map(str::to_owned))
        .collect())
}

#[test]
fn loss_and_a_cpu_starved_agent_bring_no_false_verdict_and_a_cut_is_still_found() -> anyhow::Result<()> {
    let lab = Lab::converged(5)?;
    for i in 1..=5 {
        lab.set_loss(i, 30)?;
    }
    {
        // 2 % of a CPU: h5's agent runs 20 ms of every second.
        let _starved = lab.starve_cpu(5, 2)?;
        std::thread::sleep(Duration::from_secs(60));
    }
    for i in 1..=5 {
        let wrong = verdicts(&lab, i)?;
        ensure!(wrong.is_empty(), "h{i} declared healthy members down under 30 % loss: {wrong:?}");
    }
    // A real failure, under the same loss, is still found.
    let cut = std::time::Instant::now();
    lab.cut(3, true)?;
    lab.wait_for("h3 down on the others", Duration::from_secs(60), |lab| all_see(lab, &others(lab, 3), "h3", "down"))?;
    eprintln!("h3 cut under 30 % loss: down everywhere after {:.1} s", cut.elapsed().as_secs_f64());
    Ok(())
}
