//! Where a record's partition is kept: the index the per-record path looks it up by.

/// Where a record's partition is kept, and which assignment of it delivered the record.
/// A slot is reused after a revoke, but a generation never is: a record of a revoked
/// assignment finds nothing.
///
/// Packed to 12 bytes (its generation aligned to 4): every record carries one, and a
/// record's every byte is copied on each move between stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
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
