//! Changing a running pipeline: handles a service (or, later, its control surface) holds
//! while the pipeline runs.

pub(crate) mod batching;
pub(crate) mod changes;
pub(crate) mod pause;
pub(crate) mod scaling;
