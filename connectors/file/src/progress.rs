//! Which records were handed to the pipeline and which acknowledged, and the position a
//! checkpoint may record: never past a record not yet acknowledged.

use std::collections::VecDeque;

/// A position in the file: the byte offset just after a record, and the line that
/// starts there (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Position {
    pub(crate) offset: u64,
    pub(crate) line: u64,
}

/// Records numbered in the order read (`seq`, from 0), each with the position after it.
///
/// The recordable position is the one after the last of the longest run of acknowledged
/// records from the start: everything before it is done, in any order it was done in.
#[derive(Debug)]
pub(crate) struct Progress {
    /// The seq of `pending[0]`: records before it are acknowledged and recorded.
    base: u64,
    /// From `base` on: the position after each record, and whether it is acknowledged.
    pending: VecDeque<(Position, bool)>,
    /// Everything before this position is acknowledged.
    done_to: Position,
}

impl Progress {
    /// Nothing handed out, every record before `from` done.
    pub(crate) fn new(from: Position) -> Self {
        Progress {
            base: 0,
            pending: VecDeque::new(),
            done_to: from,
        }
    }

    /// A record ending at `end` was handed out: its seq.
    pub(crate) fn handed(&mut self, end: Position) -> u64 {
        self.pending.push_back((end, false));
        self.base + self.pending.len() as u64 - 1
    }

    /// Moves the start on to `to` with nothing handed out (a CSV header, skipped).
    pub(crate) fn skip_to(&mut self, to: Position) {
        debug_assert!(self.pending.is_empty());
        self.done_to = to;
    }

    /// Record `seq` was acknowledged; `false` if it was not outstanding (acknowledged
    /// already, or never handed out).
    pub(crate) fn acknowledged(&mut self, seq: u64) -> bool {
        let Some(index) = seq.checked_sub(self.base) else {
            return false;
        };
        let Some(entry) = self.pending.get_mut(index as usize) else {
            return false;
        };
        if entry.1 {
            return false;
        }
        entry.1 = true;
        while let Some(&(end, true)) = self.pending.front() {
            self.pending.pop_front();
            self.base += 1;
            self.done_to = end;
        }
        true
    }

    /// Everything before this position is acknowledged.
    pub(crate) fn done_to(&self) -> Position {
        self.done_to
    }

    /// How many records were handed out before the first one not yet acknowledged.
    pub(crate) fn done_count(&self) -> u64 {
        self.base
    }

    /// Records handed out and not yet acknowledged.
    pub(crate) fn outstanding(&self) -> usize {
        self.pending.iter().filter(|(_, done)| !done).count()
    }

    /// Records handed out so far.
    pub(crate) fn handed_count(&self) -> u64 {
        self.base + self.pending.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(n: u64) -> Position {
        Position {
            offset: n * 10,
            line: n + 1,
        }
    }

    proptest! {
        /// Whatever order records are acknowledged in (with repeats and strays), the
        /// recorded position is after exactly the longest acknowledged run from the start,
        /// and after the last record once all are.
        #[test]
        fn the_position_never_passes_a_record_not_acknowledged(
            count in 1u64..60,
            acks in proptest::collection::vec(0u64..70, 0..200),
        ) {
            let mut progress = Progress::new(at(0));
            for n in 1..=count {
                prop_assert_eq!(progress.handed(at(n)), n - 1);
            }
            let mut acked = std::collections::HashSet::new();
            for seq in acks {
                let fresh = seq < count && acked.insert(seq);
                prop_assert_eq!(progress.acknowledged(seq), fresh);
                let run = (0..count).take_while(|s| acked.contains(s)).count() as u64;
                prop_assert_eq!(progress.done_to(), at(run));
                prop_assert_eq!(progress.done_count(), run);
                prop_assert_eq!(progress.outstanding(), (count - acked.len() as u64) as usize);
            }
            for seq in 0..count {
                progress.acknowledged(seq);
            }
            prop_assert_eq!(progress.done_to(), at(count));
            prop_assert_eq!(progress.outstanding(), 0);
            prop_assert_eq!(progress.handed_count(), count);
        }
    }
}
