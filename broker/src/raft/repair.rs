//! Repair of a replica whose log is damaged (a batch failed its CRC, or recovery had to cut
//! data that was already flushed).
//!
//! The replica cuts its log at the first untrusted entry and gets the rest again from the
//! leader by ordinary replication. Cutting entries it may have acknowledged is only safe if it
//! stops counting as a full member until it has them back: it could otherwise vote for a
//! candidate that lacks an entry that was committed with its help. So a repairing replica does
//! not campaign, does not vote, and does not take leadership over, until:
//! - it has entries up to `until` (the last index it held before the cut) committed from the
//!   current leader: everything it ever acknowledged is then back, or was overwritten by
//!   entries that are committed; or, when `until` is unknown (recovery cut the tail of a file
//!   damaged while the broker was down),
//! - it has caught up with a leader of a newer term than the one it had when the repair
//!   started, whose election it took no part in, up to an entry of that leader's term: that
//!   leader holds every entry committed before it, so this replica does too.
//!
//! The repair state is a small file in the group's directory, so that a crash in the middle
//! of a repair resumes it instead of voting with a shortened log.

use std::path::Path;

use crate::log::{write_atomic, LogError};
use crate::types::{RaftIndex, Term};

const REPAIR_FILE: &str = "repair";

/// An unfinished repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Repair {
    /// The last index this replica held before its log was cut, if known.
    pub until: Option<RaftIndex>,
    /// The replica's term when the repair started.
    pub term: Term,
}

impl Repair {
    /// Whether a replica whose log matches the leader's up to `committed` may vote again.
    /// `committed_term` is the term of that entry, `term` and `has_leader` the replica's view.
    pub fn is_done(&self, committed: RaftIndex, committed_term: Term, term: Term, has_leader: bool) -> bool {
        has_leader
            && match self.until {
                Some(until) => committed >= until,
                None => term > self.term && committed_term == term,
            }
    }

    pub fn load(dir: &Path) -> Result<Option<Self>, LogError> {
        let path = dir.join(REPAIR_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LogError::Io { path, source }),
        };
        Self::parse(&text).map(Some).ok_or_else(|| LogError::Io {
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unreadable repair state {text:?}; expected 'until=N|unknown term=N'"),
            ),
            path,
        })
    }

    fn parse(text: &str) -> Option<Self> {
        let mut until = None;
        let mut term = None;
        for field in text.split_whitespace() {
            match field.split_once('=')? {
                ("until", "unknown") => until = Some(None),
                ("until", value) => until = Some(Some(RaftIndex(value.parse().ok()?))),
                ("term", value) => term = Some(Term(value.parse().ok()?)),
                _ => return None,
            }
        }
        Some(Self {
            until: until?,
            term: term?,
        })
    }

    pub fn store(&self, dir: &Path) -> Result<(), LogError> {
        let until = self.until.map_or("unknown".to_string(), |until| until.0.to_string());
        let text = format!("until={until} term={}\n", self.term.0);
        write_atomic(dir, REPAIR_FILE, text.as_bytes())
    }

    pub fn finish(dir: &Path) -> Result<(), LogError> {
        let path = dir.join(REPAIR_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(LogError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Repair::load(dir.path()).unwrap(), None);
        for repair in [
            Repair {
                until: Some(RaftIndex(42)),
                term: Term(3),
            },
            Repair {
                until: None,
                term: Term(7),
            },
        ] {
            repair.store(dir.path()).unwrap();
            assert_eq!(Repair::load(dir.path()).unwrap(), Some(repair));
        }
        Repair::finish(dir.path()).unwrap();
        assert_eq!(Repair::load(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(REPAIR_FILE), "until=x").unwrap();
        assert!(Repair::load(dir.path()).is_err());
    }

    #[test]
    fn done_only_when_the_lost_entries_are_back() {
        let known = Repair {
            until: Some(RaftIndex(10)),
            term: Term(2),
        };
        assert!(!known.is_done(RaftIndex(9), Term(2), Term(2), true));
        assert!(!known.is_done(RaftIndex(12), Term(2), Term(2), false), "no leader");
        assert!(known.is_done(RaftIndex(10), Term(2), Term(2), true));
        let unknown = Repair {
            until: None,
            term: Term(2),
        };
        assert!(!unknown.is_done(RaftIndex(100), Term(2), Term(2), true), "same term");
        assert!(
            !unknown.is_done(RaftIndex(100), Term(2), Term(3), true),
            "not yet an entry of term 3"
        );
        assert!(unknown.is_done(RaftIndex(101), Term(3), Term(3), true));
    }
}
