//! When a message was received: a word a message, not an `Instant`'s two.

use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// When a message was received from its source, in nanoseconds after the process's
/// [`epoch`], plus one: with the zero free, a message not received costs no more room.
/// Every stage moves each message, and acknowledging compares each one's receipt with
/// its neighbour's, so a word here is cheaper than an `Instant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Receipt(NonZeroU64);

impl Receipt {
    /// The receipt of a message received at `at`.
    pub(crate) fn at(at: Instant) -> Self {
        let nanos = u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX);
        Receipt(NonZeroU64::MIN.saturating_add(nanos))
    }

    /// When it was received.
    pub(crate) fn instant(self) -> Instant {
        epoch() + Duration::from_nanos(self.0.get() - 1)
    }

    /// Seconds from this receipt to `later` (none if `later` is not later).
    pub(crate) fn seconds_to(self, later: Receipt) -> f64 {
        later.0.get().saturating_sub(self.0.get()) as f64 / 1e9
    }
}

/// A day before the process first took a receipt, or as long before as the platform's
/// clock goes back (Linux's and macOS's go back a day; Windows' only as far as the
/// machine's start): the instants a process gives its messages come after it, a paused
/// test clock's too, which starts before the first receipt. An instant before it is
/// taken as the epoch.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        [86_400, 3_600, 60, 1]
            .into_iter()
            .find_map(|seconds| now.checked_sub(Duration::from_secs(seconds)))
            .unwrap_or(now)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_keeps_its_instant_to_the_nanosecond_and_measures_to_a_later_one() {
        let at = Instant::now();
        let receipt = Receipt::at(at);
        assert_eq!(receipt.instant(), at);
        let later = Receipt::at(at + Duration::from_millis(1500));
        assert_eq!(receipt.seconds_to(later), 1.5);
        assert_eq!(later.seconds_to(receipt), 0.0);
        // An instant from before the epoch is taken as the epoch, not a wrapped value.
        let long_ago = at.checked_sub(Duration::from_secs(2 * 86_400));
        if let Some(long_ago) = long_ago {
            assert_eq!(Receipt::at(long_ago).instant(), epoch());
        }
        assert_eq!(std::mem::size_of::<Option<Receipt>>(), 8);
    }
}
