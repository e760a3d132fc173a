//! Newtypes for the ids and positions that cross module boundaries. No bare u64 travels between
//! layers: a Raft index is never mistaken for a record offset.

use std::fmt;

macro_rules! newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

newtype!(
    /// Position of a record in its partition: 0, 1, 2, ... without gaps.
    Offset(u64)
);
newtype!(
    /// Position of an entry in a Raft log (1-based; 0 means "before the first entry").
    RaftIndex(u64)
);
newtype!(
    /// A Raft term.
    Term(u64)
);
newtype!(
    /// A broker node of the cluster (1-based; 0 means "none").
    NodeId(u64)
);
newtype!(
    /// A partition of a topic (0-based).
    PartitionId(u32)
);

impl Offset {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl RaftIndex {
    pub fn get(self) -> u64 {
        self.0
    }
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl Term {
    pub fn get(self) -> u64 {
        self.0
    }
}

newtype!(
    /// A Raft group: 0 is the controller, every partition replica set has its own.
    GroupId(u64)
);

impl GroupId {
    pub const CONTROLLER: GroupId = GroupId(0);
}
