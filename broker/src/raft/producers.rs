//! Idempotent produce: the recent batches of each producer in a partition's log, so that a
//! retried batch (same producer id, epoch and sequence numbers) is answered with the offsets of
//! the copy already in the log instead of being stored twice.
//!
//! A producer stamps each batch with its producer id, epoch and the sequence number of the
//! batch's first record (per partition, counting records). Every replica records, for each
//! producer, the last [`RECENT_BATCHES`] batches in its log (index and term of their entries),
//! as the leader proposes them and as followers append them, and rebuilds the table from the
//! tail of its log when it opens it. The table is only a hint: a batch counts as present only if
//! the Raft log still holds an entry of the recorded term at the recorded index (Raft's log
//! matching then says it is the same entry), so entries cut from the log since (a deposed
//! leader's tail, a repair) never answer for a retry.
//!
//! Sequence rules, for a batch of a known producer and epoch: equal to a recent batch's
//! sequence range: a duplicate (answered with that batch's offsets once it commits); above the
//! last: new (gaps are allowed: a batch the producer gave up on leaves one); at or below the last
//! and not a recent batch: refused. An unknown producer, or a newer epoch, starts afresh.

use std::collections::{HashMap, VecDeque};

use crate::types::{RaftIndex, Term};

/// Batches remembered per producer (Kafka keeps 5; a producer here has one in flight per
/// partition, so its retries always concern its latest batch).
pub const RECENT_BATCHES: usize = 5;
/// Producers remembered per partition; the one silent longest is forgotten beyond this.
pub const PRODUCERS_MAX: usize = 10_000;
/// Entries at the end of the log read to rebuild the table when a replica opens.
pub const REBUILD_ENTRIES: u64 = 20_000;

/// The idempotence fields of a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_sequence: i32,
    pub record_count: u32,
}

impl Stamp {
    /// The stamp of an idempotent batch (`producer_id >= 0`), if it is one.
    pub fn of(header: &weir_proto::batch::BatchHeader) -> Option<Self> {
        (header.producer_id >= 0 && header.base_sequence >= 0 && header.record_count > 0).then_some(Self {
            producer_id: header.producer_id,
            epoch: header.producer_epoch,
            first_sequence: header.base_sequence,
            record_count: header.record_count,
        })
    }

    fn last_sequence(&self) -> i64 {
        i64::from(self.first_sequence) + i64::from(self.record_count) - 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recent {
    first_sequence: i32,
    last_sequence: i64,
    index: RaftIndex,
    term: Term,
}

#[derive(Debug, Default)]
struct ProducerState {
    epoch: i16,
    batches: VecDeque<Recent>,
}

/// What to do with a proposed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not stored yet: propose it.
    New,
    /// Already in the log as entry `index` of `term`: answer with its offsets.
    Duplicate { index: RaftIndex, term: Term },
    /// An old sequence that is not a recent batch (or a stale epoch): refuse it.
    Refused(String),
}

#[derive(Debug, Default)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerState>,
}

impl ProducerTable {
    /// Judges a proposed batch. `present(index, term)` tells whether the log still holds that
    /// entry; recorded batches it no longer holds are forgotten first.
    pub fn check(&mut self, stamp: &Stamp, present: impl Fn(RaftIndex, Term) -> bool) -> Verdict {
        let Some(state) = self.producers.get_mut(&stamp.producer_id) else {
            return Verdict::New;
        };
        state.batches.retain(|b| present(b.index, b.term));
        if stamp.epoch < state.epoch {
            return Verdict::Refused(format!(
                "producer {} epoch {} is older than its current epoch {}",
                stamp.producer_id, stamp.epoch, state.epoch
            ));
        }
        if stamp.epoch > state.epoch {
            return Verdict::New;
        }
        if let Some(same) = state
            .batches
            .iter()
            .find(|b| b.first_sequence == stamp.first_sequence && b.last_sequence == stamp.last_sequence())
        {
            return Verdict::Duplicate {
                index: same.index,
                term: same.term,
            };
        }
        match state.batches.back() {
            Some(last) if i64::from(stamp.first_sequence) <= last.last_sequence => Verdict::Refused(format!(
                "sequence {} of producer {} is not above its last stored sequence {} and is not one of \
                 its recent batches",
                stamp.first_sequence, stamp.producer_id, last.last_sequence
            )),
            _ => Verdict::New,
        }
    }

    /// Records a batch the log holds (or is about to hold) as entry `index` of `term`.
    pub fn record(&mut self, stamp: &Stamp, index: RaftIndex, term: Term) {
        if !self.producers.contains_key(&stamp.producer_id) && self.producers.len() >= PRODUCERS_MAX {
            self.forget_oldest();
        }
        let state = self.producers.entry(stamp.producer_id).or_default();
        if stamp.epoch > state.epoch {
            state.epoch = stamp.epoch;
            state.batches.clear();
        }
        // Entries at or after this index were replaced (a new leader's log wins).
        state.batches.retain(|b| b.index < index);
        state.batches.push_back(Recent {
            first_sequence: stamp.first_sequence,
            last_sequence: stamp.last_sequence(),
            index,
            term,
        });
        while state.batches.len() > RECENT_BATCHES {
            state.batches.pop_front();
        }
    }

    /// Forgets batches at or after `index` (the log was cut there).
    pub fn truncate_from(&mut self, index: RaftIndex) {
        for state in self.producers.values_mut() {
            state.batches.retain(|b| b.index < index);
        }
        self.producers.retain(|_, state| !state.batches.is_empty());
    }

    pub fn clear(&mut self) {
        self.producers.clear();
    }

    fn forget_oldest(&mut self) {
        let oldest = self
            .producers
            .iter()
            .min_by_key(|(_, state)| state.batches.back().map_or(RaftIndex(0), |b| b.index))
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.producers.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(first_sequence: i32, record_count: u32) -> Stamp {
        Stamp {
            producer_id: 7,
            epoch: 0,
            first_sequence,
            record_count,
        }
    }

    #[test]
    fn retries_are_duplicates_while_the_entry_is_in_the_log() {
        let mut table = ProducerTable::default();
        assert_eq!(table.check(&stamp(0, 3), |_, _| true), Verdict::New);
        table.record(&stamp(0, 3), RaftIndex(10), Term(2));
        let duplicate = Verdict::Duplicate {
            index: RaftIndex(10),
            term: Term(2),
        };
        assert_eq!(table.check(&stamp(0, 3), |_, _| true), duplicate);
        // The entry was cut from the log (another leader's entry took its place): new again.
        assert_eq!(table.check(&stamp(0, 3), |_, _| false), Verdict::New);
    }

    #[test]
    fn old_sequences_are_refused_and_gaps_allowed() {
        let mut table = ProducerTable::default();
        table.record(&stamp(0, 3), RaftIndex(10), Term(2));
        table.record(&stamp(3, 2), RaftIndex(11), Term(2));
        assert!(matches!(table.check(&stamp(1, 1), |_, _| true), Verdict::Refused(_)));
        assert_eq!(table.check(&stamp(9, 1), |_, _| true), Verdict::New);
        assert_eq!(
            table.check(&stamp(0, 3), |_, _| true),
            Verdict::Duplicate {
                index: RaftIndex(10),
                term: Term(2)
            }
        );
    }

    #[test]
    fn only_recent_batches_are_kept_and_truncation_forgets() {
        let mut table = ProducerTable::default();
        for i in 0..10u32 {
            table.record(&stamp(i as i32, 1), RaftIndex(u64::from(i) + 1), Term(1));
        }
        assert!(matches!(table.check(&stamp(0, 1), |_, _| true), Verdict::Refused(_)));
        assert!(matches!(
            table.check(&stamp(9, 1), |_, _| true),
            Verdict::Duplicate { .. }
        ));
        table.truncate_from(RaftIndex(8));
        assert_eq!(table.check(&stamp(8, 1), |_, _| true), Verdict::New);
        // A newer epoch starts afresh; an older one is refused.
        let newer = Stamp {
            epoch: 1,
            ..stamp(0, 1)
        };
        table.record(&newer, RaftIndex(20), Term(1));
        assert!(matches!(table.check(&stamp(50, 1), |_, _| true), Verdict::Refused(_)));
    }
}
