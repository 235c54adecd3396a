//! Where a record's partition is kept: the index the per-record path looks it up by.

/// Where a record's partition is kept, and which assignment of it delivered the record.
/// A slot is reused after a revoke, but a generation never is: a record of a revoked
/// assignment finds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) index: u32,
    pub(crate) generation: u64,
}

impl Slot {
    /// The slot of no partition, for records built by hand.
    pub(crate) const NONE: Slot = Slot {
        index: u32::MAX,
        generation: u64::MAX,
    };
}
