//! Foca's timers, delivered in the order they were scheduled for.
//!
//! Foca is tolerant of late timers but not of reordered ones (a task per
//! timer reorders them under load), so the core keeps them in one queue
//! ordered by deadline, ties broken by submission order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// An ordered queue of timer events.
#[derive(Debug)]
pub(crate) struct TimerQueue<E> {
    queue: BTreeMap<(Instant, u64), E>,
    next_seq: u64,
}

impl<E> TimerQueue<E> {
    pub(crate) fn new() -> Self {
        Self { queue: BTreeMap::new(), next_seq: 0 }
    }

    /// Schedules `event` for `deadline`.
    pub(crate) fn insert(&mut self, deadline: Instant, event: E) {
        self.queue.insert((deadline, self.next_seq), event);
        self.next_seq += 1;
    }

    /// The earliest deadline, if any timer is pending.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(deadline, _)| *deadline)
    }

    /// Moves every pending event `by` later, keeping their order.
    pub(crate) fn postpone_all(&mut self, by: Duration) {
        self.queue = std::mem::take(&mut self.queue).into_iter().map(|((at, seq), e)| ((at + by, seq), e)).collect();
    }

    /// Removes and returns the earliest event due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<E> {
        let entry = self.queue.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        Some(entry.remove())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_events_come_out_in_deadline_then_submission_order() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        q.insert(t0 + Duration::from_millis(20), "late");
        q.insert(t0 + Duration::from_millis(10), "first");
        q.insert(t0 + Duration::from_millis(10), "second");
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(q.pop_due(t0), None);
        let now = t0 + Duration::from_millis(15);
        assert_eq!(q.pop_due(now), Some("first"));
        assert_eq!(q.pop_due(now), Some("second"));
        assert_eq!(q.pop_due(now), None);
        assert_eq!(q.pop_due(t0 + Duration::from_secs(1)), Some("late"));
    }

    #[test]
    fn postponing_keeps_the_order() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        q.insert(t0, "first");
        q.insert(t0 + Duration::from_millis(10), "second");
        q.postpone_all(Duration::from_secs(5));
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(q.pop_due(t0 + Duration::from_secs(1)), None);
        assert_eq!(q.pop_due(t0 + Duration::from_secs(6)), Some("first"));
        assert_eq!(q.pop_due(t0 + Duration::from_secs(6)), Some("second"));
    }
}
