//! The chaos suite: faults in the lab while sandboxes come and go. After
//! each fault clears, every host's view and kernel tables must converge to
//! the state the test computed from what it did, with no endpoint lost and
//! nothing stale programmed. Each case prints how long that took (a figure,
//! not a timed assertion: the bound is only there to end the test). Needs root.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use mesh_scenarios::chaos::{false_verdicts, Churn};
use mesh_scenarios::Lab;

const HOSTS: usize = 4;
/// Bound on the wait for convergence after a fault clears.
const CONVERGE: Duration = Duration::from_secs(60);
/// Time between two churn steps.
const CHURN_EVERY: Duration = Duration::from_millis(300);

/// A cluster of [`HOSTS`] with overlay network `dev`, churn on it, and a
/// first converged state.
fn cluster() -> anyhow::Result<(Lab, Churn)> {
    let mut lab = Lab::new(HOSTS)?;
    lab.form_cluster()?;
    lab.mesh_ok(1, &["network", "create", "dev", "--subnet", "10.30.0.0/24", "--vni", "3030"])?;
    let mut churn = Churn::new("dev", 3030);
    lab.wait_for("dev on every host", CONVERGE, |lab| {
        (1..=HOSTS).try_fold(true, |ok, i| Ok(ok && lab.mesh(i, &["network", "inspect", "dev"])?.success))
    })?;
    for _ in 0..HOSTS {
        churn.step(&lab)?;
    }
    lab.wait_for("the first sandboxes everywhere", CONVERGE, |lab| churn.converged(lab))?;
    Ok((lab, churn))
}

/// Churns for `span`.
fn churn_for(lab: &Lab, churn: &mut Churn, span: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + span;
    while Instant::now() < end {
        churn.step(lab)?;
        std::thread::sleep(CHURN_EVERY);
    }
    Ok(())
}

/// Waits for every host to show the expected state after `case`'s fault
/// cleared (so no live sandbox was lost and nothing stale is programmed),
/// and reports how long that took and how many "down" verdicts were
/// given about hosts the fault did not touch (`faulted` may rightly be
/// declared down). Such verdicts fail the test.
fn converges(lab: &Lab, churn: &Churn, case: &str, faulted: &[usize]) -> anyhow::Result<()> {
    let took = lab
        .wait_for(&format!("convergence after {case}"), CONVERGE, |lab| churn.converged(lab))
        .map_err(|e| e.context(format!("what each host shows:\n{}", churn.describe(lab))))?;
    let false_verdicts = false_verdicts(lab, faulted);
    println!(
        "chaos: {case}: {} sandboxes, converged {:.2} s after the fault cleared, {false_verdicts} false down verdicts",
        churn.len(),
        took.as_secs_f64()
    );
    ensure!(false_verdicts == 0, "{case}: {false_verdicts} healthy hosts were declared down");
    Ok(())
}

/// `percent` loss on every host for `span` under churn.
fn loss_case(percent: u32, span: Duration) -> anyhow::Result<()> {
    let (lab, mut churn) = cluster()?;
    for i in 1..=HOSTS {
        lab.set_loss(i, percent)?;
    }
    let churned = churn_for(&lab, &mut churn, span);
    for i in 1..=HOSTS {
        lab.set_loss(i, 0)?;
    }
    churned?;
    converges(&lab, &churn, &format!("{percent} % loss for {} s", span.as_secs()), &[])
}

#[test]
fn ten_percent_loss_on_every_host() -> anyhow::Result<()> {
    loss_case(10, Duration::from_secs(20))
}

#[test]
fn twenty_percent_loss_on_every_host() -> anyhow::Result<()> {
    loss_case(20, Duration::from_secs(20))
}

#[test]
fn thirty_percent_loss_on_every_host() -> anyhow::Result<()> {
    loss_case(30, Duration::from_secs(30))
}

#[test]
fn a_flapping_link() -> anyhow::Result<()> {
    let (lab, mut churn) = cluster()?;
    for _ in 0..6 {
        lab.cut(2, true)?;
        churn_for(&lab, &mut churn, Duration::from_secs(2))?;
        lab.cut(2, false)?;
        churn_for(&lab, &mut churn, Duration::from_secs(2))?;
    }
    converges(&lab, &churn, "h2's link flapping every 2 s for 24 s", &[2])
}

#[test]
fn a_partition_that_heals() -> anyhow::Result<()> {
    let (lab, mut churn) = cluster()?;
    lab.partition(&[3, 4])?;
    // Longer than failure detection: each side declares the other down.
    let churned = churn_for(&lab, &mut churn, Duration::from_secs(20));
    lab.heal()?;
    churned?;
    converges(&lab, &churn, "a 20 s partition healed", &[1, 2, 3, 4])
}

#[test]
fn a_frozen_agent_that_resumes() -> anyhow::Result<()> {
    let (lab, mut churn) = cluster()?;
    churn.skip(3, true);
    lab.freeze(3, true)?;
    let churned = churn_for(&lab, &mut churn, Duration::from_secs(15));
    lab.freeze(3, false)?;
    churned?;
    churn.skip(3, false);
    converges(&lab, &churn, "h3's agent frozen 15 s and resumed", &[3])
}

#[test]
fn rolling_restarts_of_every_agent_under_churn() -> anyhow::Result<()> {
    let (mut lab, mut churn) = cluster()?;
    for i in 1..=HOSTS {
        churn.skip(i, true);
        // Half stop cleanly, half are killed.
        if i % 2 == 0 {
            lab.kill(i)?;
        } else {
            lab.terminate(i)?;
        }
        churn_for(&lab, &mut churn, Duration::from_secs(2))?;
        lab.start_agent(i, &[])?;
        lab.wait_for("the restarted agent to know dev", CONVERGE, |lab| {
            Ok(lab.mesh(i, &["network", "inspect", "dev"])?.success)
        })?;
        churn.skip(i, false);
        churn_for(&lab, &mut churn, Duration::from_secs(2))?;
    }
    converges(&lab, &churn, "every agent restarted in turn (SIGTERM or SIGKILL)", &[1, 2, 3, 4])
}

#[test]
fn the_check_notices_a_missing_kernel_entry() -> anyhow::Result<()> {
    let (lab, churn) = cluster()?;
    let fdb = lab.exec(1, "bridge", &["fdb", "show", "dev", "mvx3030"])?.stdout;
    let entry = fdb.lines().find(|l| l.contains(" dst ")).context("h1 has a remote FDB entry")?;
    let words: Vec<&str> = entry.split_whitespace().collect();
    let dst = words.iter().position(|w| *w == "dst").context("dst")?;
    lab.exec(1, "bridge", &["fdb", "del", words[0], "dev", "mvx3030", "dst", words[dst + 1]])?;
    ensure!(!churn.converged(&lab)?, "the check missed h1's deleted FDB entry for {}", words[0]);
    // The reconciler restores it.
    converges(&lab, &churn, "an FDB entry deleted by hand", &[])
}
