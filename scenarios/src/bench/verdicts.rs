//! False "down" verdicts: mesh and Serf run side by side on the same lab,
//! under the same faults at the same moments. Every host drops a share of
//! the packets it receives, at random, for the whole run, and the last
//! host's agents (both systems') are frozen with SIGSTOP for a few seconds
//! at a time, then resumed, as a CPU-starved or paused VM would be.
//!
//! A verdict is one host's agent declaring a member down, read from its
//! log. Every verdict about a host that was never frozen is false; those
//! about the frozen host are reported apart (it really stopped answering).
//! A frozen agent that wakes up and accuses the others is the failure
//! Lifeguard exists for, and counts as false.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::report::{Better, Figure};
use super::systems::{serf_installed, Mesh, Serf, System};
use crate::lab::Lab;

/// How long the agent is frozen each time.
const FREEZE: Duration = Duration::from_secs(5);
/// Time between the starts of two freezes.
const FREEZE_EVERY: Duration = Duration::from_secs(60);

/// What the run counted for one system.
#[derive(Debug, Default, Clone, Copy)]
struct Verdicts {
    /// Verdicts about hosts that were never frozen.
    false_downs: usize,
    /// Verdicts about the frozen host.
    about_frozen: usize,
}

/// Runs `hosts` hosts for `length` with `loss_percent` % loss on every
/// host and the last host frozen for [`FREEZE`] every [`FREEZE_EVERY`]
/// (at least once); mesh beside Serf when it is installed.
pub fn run(hosts: usize, length: Duration, loss_percent: u32) -> anyhow::Result<Vec<Figure>> {
    anyhow::ensure!(hosts >= 3, "the benchmark needs at least 3 hosts");
    let mut lab = Lab::new(hosts)?;
    let serf = Serf::logging_verdicts();
    let mut systems: Vec<&dyn System> = vec![&Mesh];
    if serf_installed() {
        systems.push(&serf);
    } else {
        println!("serf is not installed (apt-get install serf): no baseline");
    }
    println!(
        "false verdicts on {hosts} lab hosts: {loss_percent} % loss for {} s, h{hosts} frozen {} s every {} s",
        length.as_secs(),
        FREEZE.as_secs(),
        FREEZE_EVERY.as_secs()
    );
    for system in &systems {
        form(*system, &mut lab)?;
    }
    let before: Vec<Verdicts> = systems.iter().map(|s| count(*s, &lab)).collect::<anyhow::Result<_>>()?;
    let faults = inject(&lab, &systems, length, loss_percent);
    let healed = heal(&lab, &systems);
    faults.and(healed)?;
    let after: Vec<Verdicts> = systems.iter().map(|s| count(*s, &lab)).collect::<anyhow::Result<_>>()?;
    let counted: Vec<Verdicts> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| Verdicts {
            false_downs: a.false_downs - b.false_downs,
            about_frozen: a.about_frozen - b.about_frozen,
        })
        .collect();
    for (system, verdicts) in systems.iter().zip(&counted) {
        println!(
            "   {}: {} false verdicts, {} about the frozen host",
            system.name(),
            verdicts.false_downs,
            verdicts.about_frozen
        );
    }
    for system in &systems {
        system.stop(&mut lab)?;
    }
    let serf_counted = counted.get(1).copied();
    let minutes = length.as_secs_f64() / 60.0;
    let conditions = format!("{hosts} hosts, {minutes:.1} min, {loss_percent} % loss, one agent frozen and resumed");
    let figure = |what: &str, value: fn(&Verdicts) -> usize| {
        let mesh = Figure::new(
            "verdicts",
            format!("{what}, {conditions}"),
            "verdicts",
            Better::Lower,
            Some(value(&counted[0]) as f64),
        );
        match serf_counted {
            Some(serf) => mesh.against("serf", Some(value(&serf) as f64)),
            None => mesh,
        }
    };
    Ok(vec![
        figure("false down verdicts about healthy hosts", |v| v.false_downs).aiming("0"),
        figure("down verdicts about the frozen host", |v| v.about_frozen),
    ])
}

/// Starts `system` on every host, joins them, and waits until every host
/// lists every other alive.
fn form(system: &dyn System, lab: &mut Lab) -> anyhow::Result<()> {
    system.start(lab)?;
    for i in 2..=lab.len() {
        system.join(lab, i)?;
    }
    let n = lab.len();
    lab.wait_for(&format!("{} to converge", system.name()), Duration::from_secs(60), |lab| {
        (1..=n).try_fold(true, |ok, i| {
            Ok(ok && system.view(lab, i)?.iter().filter(|(_, status)| status == "alive").count() == n)
        })
    })?;
    Ok(())
}

/// Loss on every host for `length`, the last host frozen from time to time.
fn inject(lab: &Lab, systems: &[&dyn System], length: Duration, loss_percent: u32) -> anyhow::Result<()> {
    let frozen = lab.len();
    for i in 1..=lab.len() {
        lab.set_loss(i, loss_percent)?;
    }
    let start = Instant::now();
    let mut next_freeze = start + Duration::from_secs(5).min(length / 4);
    while start.elapsed() < length {
        if Instant::now() >= next_freeze {
            for system in systems {
                system.freeze(lab, frozen, true)?;
            }
            std::thread::sleep(FREEZE);
            for system in systems {
                system.freeze(lab, frozen, false)?;
            }
            next_freeze += FREEZE_EVERY;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Removes the loss and thaws the frozen agents, whatever happened.
fn heal(lab: &Lab, systems: &[&dyn System]) -> anyhow::Result<()> {
    let mut result = Ok(());
    for i in 1..=lab.len() {
        result = result.and(lab.set_loss(i, 0));
    }
    for system in systems {
        result = result.and(system.freeze(lab, lab.len(), false));
    }
    result
}

/// The verdicts `system`'s agents have logged so far.
fn count(system: &dyn System, lab: &Lab) -> anyhow::Result<Verdicts> {
    let frozen = format!("h{}", lab.len());
    let mut verdicts = Verdicts::default();
    for i in 1..=lab.len() {
        let names = system.declared_down(lab, i).with_context(|| format!("{} on h{i}", system.name()))?;
        let about_frozen = names.iter().filter(|name| **name == frozen).count();
        verdicts.about_frozen += about_frozen;
        verdicts.false_downs += names.len() - about_frozen;
    }
    Ok(verdicts)
}
