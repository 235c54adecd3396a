//! Changing running pipelines: the handles a service holds while its pipelines run
//! ([`PauseSwitch`](crate::PauseSwitch), [`Batching`](crate::Batching),
//! [`Scaling`](crate::Scaling), [`RateLimits`](crate::RateLimits)), the record of changes
//! ([`Change`](crate::Change)), and the [`ControlSurface`] that offers them over HTTP,
//! behind a token.

pub(crate) mod batching;
pub(crate) mod changes;
pub(crate) mod pause;
pub(crate) mod scaling;
mod surface;
pub(crate) mod watched;

pub use surface::{Control, ControlSurface, MIN_TOKEN_LEN};
