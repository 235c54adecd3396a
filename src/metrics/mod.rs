//! Prometheus metrics and the health endpoint.
//!
//! Every pipeline counts into one registry per process, [`registry`]; connectors add
//! their own gauges (the Kafka lag) to it. [`MetricsServer`] serves it with the health
//! probes. `docs/metrics.md` lists every metric, its type, labels and meaning.
//!
//! Labels are bounded: `pipeline`, `stage`, `batcher`, `outcome`, `trigger`, `limiter`
//! (and the connectors' `topic`, `partition`, ...), never a message key.

mod families;
mod feed;
pub(crate) mod health;
mod page;
mod server;

use std::sync::OnceLock;

pub(crate) use families::{
    BatcherMetrics, ChangeCounts, HandlingTimes, Held, PipelineMetrics, SourceStalls, Stage, StageMetrics,
    TIME_EACH_AFTER,
};
pub use server::{BindError, MetricsServer, MetricsServerBuilder};

/// The process's metrics registry: longshore's metrics, and whatever a service or a
/// connector registers next to them.
///
/// ```
/// let counter = prometheus::IntCounter::new("orders_total", "Orders seen.").unwrap();
/// longshore::metrics::registry().register(Box::new(counter.clone())).unwrap();
/// counter.inc();
/// ```
pub fn registry() -> &'static prometheus::Registry {
    static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();
    REGISTRY.get_or_init(prometheus::Registry::new)
}
