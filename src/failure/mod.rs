//! The failure path: retries with backoff, dead-letter destinations, rate limits.
//!
//! ```text
//!  handle_message / handle_batch fails
//!        │
//!        ├─ attempts left, not Permanent ──▶ wait backoff (the stage goes on) ──▶ try again
//!        │     (with partition_by, later messages of the key wait behind it)
//!        └─ last attempt, or Permanent ──▶ handle_failed ──▶ dead letter ──▶ ack as failed
//! ```

pub(crate) mod dead_letter;
pub(crate) mod rate_limit;
pub(crate) mod retry;
