//! Which records each member is known to hold lately: those it sent this
//! node and those this node sent it. A sync answers a pull with the
//! records of whole buckets, and two members that come up to each other
//! at once run two rounds: without this, each sent the other its own
//! records back and its own twice (three copies where one was needed, in
//! the simulator; 1.5 MB twice after a restart with 10,000 endpoints).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::identity::NodeId;
use crate::records::Record;

/// How long a record counts as held by a member after it was seen there:
/// long enough for both rounds of a pair, short enough that a page lost
/// with its connection is sent again by the next round.
const HELD_FOR: Duration = Duration::from_secs(1);

/// Records members hold, as far as this node saw in the last
/// [`HELD_FOR`] to twice that: two generations, the older dropped whole.
#[derive(Default)]
pub(super) struct RecentlyHeld {
    since: Option<Instant>,
    current: HashMap<NodeId, HashSet<u64>>,
    previous: HashMap<NodeId, HashSet<u64>>,
}

impl RecentlyHeld {
    /// Notes that `peer` holds `records`.
    pub(super) fn note<'a>(&mut self, now: Instant, peer: NodeId, records: impl IntoIterator<Item = &'a Record>) {
        self.age(now);
        self.current.entry(peer).or_default().extend(records.into_iter().map(id));
    }

    /// Keeps of `records` those `peer` was not seen holding lately, and
    /// notes that it holds them once they are sent.
    pub(super) fn keep_unheld(&mut self, now: Instant, peer: NodeId, records: &mut Vec<Record>) {
        self.age(now);
        let seen =
            |generation: &HashMap<NodeId, HashSet<u64>>, id| generation.get(&peer).is_some_and(|ids| ids.contains(&id));
        records.retain(|record| !seen(&self.current, id(record)) && !seen(&self.previous, id(record)));
        self.note(now, peer, records.iter());
    }

    /// Starts a new generation every [`HELD_FOR`].
    fn age(&mut self, now: Instant) {
        match self.since {
            Some(since) if now < since + HELD_FOR => {}
            Some(since) if now < since + 2 * HELD_FOR => {
                self.previous = std::mem::take(&mut self.current);
                self.since = Some(now);
            }
            _ => {
                self.previous.clear();
                self.current.clear();
                self.since = Some(now);
            }
        }
    }
}

/// A record's identity: the start of its seal's signature, which differs
/// for every content its writer signs.
fn id(record: &Record) -> u64 {
    let r = record.seal.signature.0;
    u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::testing::{endpoint, endpoint_record, node};

    #[test]
    fn a_record_counts_as_held_for_a_while_and_only_by_its_member() {
        let record = endpoint_record(1, "web", 1, endpoint("dev", "10.0.0.2", 1));
        let newer = endpoint_record(1, "web", 2, endpoint("dev", "10.0.0.2", 1));
        let start = Instant::now();
        let mut held = RecentlyHeld::default();
        held.note(start, node(2), [&record]);
        let holds = |held: &mut RecentlyHeld, at: Instant, peer: u8, record: &Record| {
            let mut records = vec![record.clone()];
            held.keep_unheld(at, node(peer), &mut records);
            records.is_empty()
        };
        assert!(holds(&mut held, start + HELD_FOR / 2, 2, &record));
        assert!(!holds(&mut held, start, 2, &newer), "another version is another record");
        assert!(!holds(&mut held, start, 3, &record), "only the member seen holding it");
        assert!(holds(&mut held, start + HELD_FOR * 3 / 2, 2, &record), "kept at least HELD_FOR");
        assert!(!holds(&mut held, start + HELD_FOR * 4, 2, &record), "forgotten after twice HELD_FOR");
    }
}
