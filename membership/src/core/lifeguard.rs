//! Lifeguard (Dadgar, Phillips and Currey, "Lifeguard: Local Health
//! Awareness for More Accurate Failure Detection", 2018), which memberlist
//! has and foca lacks, built around foca from the timers it asks for:
//!
//! - **Suspicion that needs confirmations.** Foca declares a member down a
//!   fixed time after its own probe failed. Here that verdict waits up to
//!   [`MAX_SUSPICION_FACTOR`] times the minimum, and comes down to the
//!   minimum as other members independently accuse the same member at the
//!   same incarnation (memberlist's formula, [`Suspicion::deadline`]). A
//!   node whose probe was unlucky (loss, a slow path) stays alone in its
//!   suspicion and leaves the suspect time to refute; a crashed node is
//!   accused by everyone who probes it and goes down at the minimum.
//! - **Accusations are told to the accused.** Each accuser sends
//!   [`Frame::Suspect`] to the members and to the suspect itself, which
//!   refutes at once and answers each accuser directly (any SWIM packet
//!   carries its new incarnation): Lifeguard's "buddy system", made direct.
//! - **Local health.** A node that has to refute, or finds its event loop
//!   stalled, is more likely the slow one: its probe period and probe
//!   timeout stretch by its health score plus one (up to 9×), so it
//!   accuses less, as memberlist's awareness does; each probe answered
//!   brings it back by one. A failed probe alone does not count against
//!   the prober (memberlist counts only missing nacks, which foca lacks):
//!   it would slow every healthy node's probing just when a member has
//!   failed and confirmations are needed.
//! - **Stalls are not failures.** A node that was stopped or starved of CPU
//!   finds its timers overdue when it runs again, before it has read what
//!   its peers sent meanwhile. It postpones every timer by the stall rather
//!   than fail the probes that were in flight and accuse healthy peers.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use foca::{Incarnation, Member, State, Timer};

use super::{config_for, Core, CoreError, CoreTimer};
use crate::identity::{NodeId, NodeIdentity};
use crate::records::Tier;
use crate::wire::Frame;

/// Highest local health score (memberlist's awareness maximum is 8).
const MAX_HEALTH_SCORE: u32 = 8;
/// Independent accusers that bring a suspicion down to its minimum time
/// (Lifeguard's K; memberlist uses 2, which in the simulator found a
/// crash no sooner and, under 30 % loss, later).
const CONFIRMATIONS: usize = 3;
/// Longest suspicion, as a multiple of the shortest (memberlist's default).
const MAX_SUSPICION_FACTOR: u32 = 6;
/// A timer this overdue means the node itself stalled.
const STALL: Duration = Duration::from_millis(250);
/// How long an accusation is remembered, so that it is relayed once.
const REMEMBER_ACCUSATIONS: Duration = Duration::from_secs(60);
/// Most accusations remembered; beyond it the oldest are forgotten early.
const MAX_REMEMBERED: usize = 4096;

/// One accusation: `accuser` suspects `target` at `incarnation`.
type Accusation = (NodeIdentity, Incarnation, NodeId);

/// This node's health score: 0 when all is well, up to
/// [`MAX_HEALTH_SCORE`] when it is accused and stalls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalHealth(u32);

impl LocalHealth {
    /// Something suggests this node is the slow one.
    pub(crate) fn worse(&mut self) {
        self.0 = (self.0 + 1).min(MAX_HEALTH_SCORE);
    }

    /// A probe went as it should.
    pub(crate) fn better(&mut self) {
        self.0 = self.0.saturating_sub(1);
    }

    /// `period` stretched by this node's health: (score + 1) times.
    pub(crate) fn scale(self, period: Duration) -> Duration {
        period * (self.0 + 1)
    }
}

/// This node's suspicion of one member, from its own failed probe.
#[derive(Debug)]
pub(crate) struct Suspicion {
    /// Foca's timer that declares the member down, held back until due.
    timer: Timer<NodeIdentity>,
    target: NodeIdentity,
    incarnation: Incarnation,
    started: Instant,
    min: Duration,
    /// Confirmations that bring it to `min` (fewer in tiny clusters).
    needed: usize,
    /// Other members that accused the same member at the same incarnation.
    confirmations: BTreeSet<NodeId>,
}

impl Suspicion {
    /// A suspicion starting `now`, lasting at least `min`, in a cluster of
    /// `size` nodes (where at most `size - 2` others can confirm it).
    pub(crate) fn new(timer: Timer<NodeIdentity>, now: Instant, min: Duration, size: usize) -> Option<Self> {
        let Timer::ChangeSuspectToDown { member_id, incarnation, .. } = &timer else { return None };
        Some(Self {
            target: member_id.clone(),
            incarnation: *incarnation,
            started: now,
            min,
            needed: CONFIRMATIONS.min(size.saturating_sub(2)),
            confirmations: BTreeSet::new(),
            timer,
        })
    }

    /// When the member is declared down unless it refutes: the maximum
    /// time with no confirmation, shrinking with the log of the number of
    /// confirmations to the minimum at [`CONFIRMATIONS`].
    pub(crate) fn deadline(&self) -> Instant {
        let max = self.min * MAX_SUSPICION_FACTOR;
        let confirmed = self.confirmations.len().min(self.needed);
        let share = if self.needed == 0 {
            1.0
        } else {
            // Counts are tiny: the conversions are exact.
            #[allow(clippy::cast_precision_loss)]
            let share = ((confirmed + 1) as f64).ln() / ((self.needed + 1) as f64).ln();
            share
        };
        self.started + max - (max - self.min).mul_f64(share)
    }

    /// Whether this suspicion is about `target` at `incarnation`.
    fn is_about(&self, target: &NodeIdentity, incarnation: Incarnation) -> bool {
        self.target == *target && self.incarnation == incarnation
    }

    /// Counts `accuser`'s accusation; returns whether it was new.
    fn confirm(&mut self, accuser: NodeId) -> bool {
        self.confirmations.insert(accuser)
    }
}

/// Lifeguard's state in a core.
#[derive(Debug, Default)]
pub(crate) struct Lifeguard {
    pub(crate) health: LocalHealth,
    /// This node's open suspicions, by member.
    suspicions: HashMap<NodeId, Suspicion>,
    /// Accusations heard, and when: each is relayed once.
    heard: HashMap<Accusation, Instant>,
    /// Probes of this node's that failed, ever.
    failed_probes: u64,
}

impl Lifeguard {
    /// Remembers an accusation; returns whether it is news.
    fn hear(&mut self, accusation: Accusation, now: Instant) -> bool {
        if self.heard.len() >= MAX_REMEMBERED {
            self.forget_before(now);
            if self.heard.len() >= MAX_REMEMBERED {
                self.heard.clear();
            }
        }
        self.heard.insert(accusation, now).is_none()
    }

    /// Forgets accusations heard long enough ago.
    pub(crate) fn forget_before(&mut self, now: Instant) {
        self.heard.retain(|_, at| now.saturating_duration_since(*at) < REMEMBER_ACCUSATIONS);
    }
}

impl Core {
    /// Queues a timer foca asked for, the Lifeguard way: suspicions wait
    /// for confirmations, probes stretch with this node's health.
    pub(super) fn schedule_swim_timer(&mut self, now: Instant, after: Duration, timer: Timer<NodeIdentity>) {
        match timer {
            Timer::ChangeSuspectToDown { .. } => self.accuse(now, timer),
            Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } => {
                let after = self.lifeguard.health.scale(after);
                self.timers.insert(now + after, CoreTimer::Swim(timer));
            }
            other => self.timers.insert(now + after, CoreTimer::Swim(other)),
        }
    }

    /// Runs foca's probe timer and scores its outcome: foca checks the
    /// previous probe there and, if it failed, asks for a suspicion timer.
    pub(super) fn run_probe_timer(&mut self, now: Instant, timer: Timer<NodeIdentity>) {
        let failed_before = self.lifeguard.failed_probes;
        if let Err(error) = self.swim.handle_timer(timer, &mut self.runtime) {
            tracing::debug!(%error, "swim probe timer");
        }
        self.drain(now);
        if self.lifeguard.failed_probes == failed_before {
            self.lifeguard.health.better();
        }
    }

    /// Postpones every timer if the earliest is overdue by more than
    /// [`STALL`]: this node was stopped or starved, not its peers.
    pub(super) fn absorb_stall(&mut self, now: Instant) {
        let Some(due) = self.timers.next_deadline() else { return };
        let late = now.saturating_duration_since(due);
        if late > STALL {
            self.timers.postpone_all(late);
            self.lifeguard.health.worse();
            tracing::info!(?late, "this node stalled: its timers are postponed, its peers not accused");
        }
    }

    /// A suspicion timer is due: declares the member down if its deadline
    /// has come (confirmations may have brought it closer since).
    pub(super) fn suspicion_due(&mut self, now: Instant, id: NodeId) {
        let Some(suspicion) = self.lifeguard.suspicions.get(&id) else { return };
        let deadline = suspicion.deadline();
        tracing::debug!(
            member = ?suspicion.target,
            confirmations = suspicion.confirmations.len(),
            wait = ?deadline.saturating_duration_since(now),
            "suspicion due"
        );
        if now < deadline {
            self.timers.insert(deadline, CoreTimer::SuspicionDue(id));
            return;
        }
        let Some(suspicion) = self.lifeguard.suspicions.remove(&id) else { return };
        // Foca 2.0 sends "you are down" to the member whenever this timer
        // fires, even when the suspicion was refuted since (its check only
        // guards the verdict): a healthy member would then renew its
        // identity. Only a standing suspicion goes to foca.
        let standing = self.swim.iter_membership_state().any(|m| {
            m.id() == &suspicion.target && m.incarnation() == suspicion.incarnation && m.state() == State::Suspect
        });
        if !standing {
            return;
        }
        if let Err(error) = self.swim.handle_timer(suspicion.timer, &mut self.runtime) {
            tracing::debug!(%error, "swim suspicion timer");
        }
    }

    /// Handles an accusation from `from` (the accuser or a relay).
    pub(super) fn handle_accusation(
        &mut self,
        now: Instant,
        from: NodeId,
        (target, incarnation, accuser): Accusation,
    ) -> Result<(), CoreError> {
        let me = self.identity().clone();
        if target.id == me.id {
            return self.refute(now, &target, incarnation, accuser);
        }
        if accuser == me.id || !self.lifeguard.hear((target.clone(), incarnation, accuser), now) {
            return Ok(());
        }
        tracing::debug!(member = ?target, incarnation, ?accuser, "accusation heard");
        if let Some(suspicion) = self.lifeguard.suspicions.get_mut(&target.id) {
            if suspicion.is_about(&target, incarnation) && suspicion.confirm(accuser) {
                self.timers.insert(suspicion.deadline(), CoreTimer::SuspicionDue(target.id));
            }
        }
        let frame = Frame::Suspect { target, incarnation, accuser };
        for peer in self.relay_targets(Some(from), Tier::V1) {
            self.send_unreliable(&peer, &frame);
        }
        Ok(())
    }

    /// This node's own probe failed: opens a suspicion (unless one is open
    /// already) and tells the members and the suspect.
    fn accuse(&mut self, now: Instant, timer: Timer<NodeIdentity>) {
        self.lifeguard.failed_probes += 1;
        let size = self.peer_count() + 1;
        let min = config_for(self.configured_size).suspect_to_down_after;
        let Some(mut suspicion) = Suspicion::new(timer, now, min, size) else { return };
        let (target, incarnation) = (suspicion.target.clone(), suspicion.incarnation);
        if self.lifeguard.suspicions.get(&target.id).is_some_and(|open| open.is_about(&target, incarnation)) {
            return;
        }
        // Accusers heard before this node's own probe failed count too.
        for (accused, at_incarnation, accuser) in self.lifeguard.heard.keys() {
            if suspicion.is_about(accused, *at_incarnation) {
                suspicion.confirm(*accuser);
            }
        }
        tracing::debug!(member = ?target, incarnation, confirmations = suspicion.confirmations.len(), "probe failed: suspecting");
        self.timers.insert(suspicion.deadline(), CoreTimer::SuspicionDue(target.id));
        self.lifeguard.suspicions.insert(target.id, suspicion);
        let frame = Frame::Suspect { target: target.clone(), incarnation, accuser: self.identity().id };
        for peer in self.push_targets(Some(target.id), Tier::V1) {
            self.send(&peer, &frame);
        }
        self.send(&target, &frame);
    }

    /// This node was accused: refutes through foca (a higher incarnation,
    /// gossiped) and tells the accuser directly.
    fn refute(
        &mut self,
        now: Instant,
        target: &NodeIdentity,
        incarnation: Incarnation,
        accuser: NodeId,
    ) -> Result<(), CoreError> {
        // An accusation of an identity this node no longer has is moot.
        if target != self.identity() {
            return Ok(());
        }
        self.lifeguard.health.worse();
        let suspect = Member::new(target.clone(), incarnation, State::Suspect);
        let mut result = self.swim.apply_many(std::iter::once(suspect), true, &mut self.runtime);
        if let Some(accuser) = self.active_peer(accuser) {
            // Any SWIM packet carries this node's incarnation; this one
            // goes as a stream, so that loss cannot eat the refutation.
            self.take_packets();
            result = result.and(self.swim.announce(accuser, &mut self.runtime));
            self.take_packets_as(true);
        }
        self.drain(now);
        Ok(result?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suspicion(size: usize) -> Suspicion {
        let target = NodeIdentity {
            id: NodeId([7; 16]),
            bump: 1,
            name: "n7".into(),
            addr: "198.18.0.7:7950".parse().expect("addr"),
        };
        let timer = Timer::ChangeSuspectToDown { member_id: target, incarnation: 0, token: 0 };
        Suspicion::new(timer, Instant::now(), Duration::from_secs(4), size).expect("a suspicion timer")
    }

    #[test]
    fn a_lone_suspicion_waits_the_maximum_and_confirmations_bring_it_to_the_minimum() {
        let mut s = suspicion(20);
        let after = |s: &Suspicion| s.deadline() - s.started;
        assert_eq!(after(&s), Duration::from_secs(24));
        assert!(s.confirm(NodeId([1; 16])));
        assert!(!s.confirm(NodeId([1; 16])), "the same accuser counts once");
        let one = after(&s);
        assert!(one < Duration::from_secs(24) && one > Duration::from_secs(4), "{one:?}");
        s.confirm(NodeId([2; 16]));
        let two = after(&s);
        assert!(two < one && two > Duration::from_secs(4), "{two:?}");
        s.confirm(NodeId([3; 16]));
        assert_eq!(after(&s), Duration::from_secs(4));
        s.confirm(NodeId([4; 16]));
        assert_eq!(after(&s), Duration::from_secs(4), "never below the minimum");
    }

    #[test]
    fn in_a_cluster_of_two_nobody_can_confirm_so_the_minimum_applies() {
        let s = suspicion(2);
        assert_eq!(s.deadline() - s.started, Duration::from_secs(4));
    }

    #[test]
    fn health_stretches_periods_up_to_nine_times() {
        let mut health = LocalHealth::default();
        assert_eq!(health.scale(Duration::from_secs(1)), Duration::from_secs(1));
        for _ in 0..20 {
            health.worse();
        }
        assert_eq!(health.scale(Duration::from_secs(1)), Duration::from_secs(9));
        health.better();
        assert_eq!(health.scale(Duration::from_secs(1)), Duration::from_secs(8));
    }
}
