//! Prometheus metrics and the health endpoint.
//!
//! Every pipeline counts into one registry per process, [`registry`]; connectors add
//! their own gauges (the Kafka lag) to it. [`MetricsServer`] serves it with the health
//! probes. `docs/metrics.md` lists every metric, its type, labels and meaning.
//!
//! Labels are bounded: `pipeline`, `stage`, `batcher`, `outcome`, `trigger`, `limiter`
//! (and the connectors' `topic`, `partition`, ...), never a message key.

pub(crate) mod calls;
mod connections;
mod families;
mod feed;
pub(crate) mod health;
mod page;
mod server;
mod weighted;

use std::sync::OnceLock;

pub(crate) use families::{
    BatcherMetrics, ChangeCounts, HandlingTimes, Held, PipelineMetrics, SourceStalls, Stage, StageMetrics,
    TIME_EACH_AFTER,
};
pub use server::{BindError, MetricsServer, MetricsServerBuilder};
pub(crate) use weighted::WeightedHistogram;
#[cfg(test)]
pub(crate) use weighted::WeightedHistogramVec;

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

/// A gauge family named `name` with `labels`, registered on [`registry`]: a
/// connector's lag gauges. Call it once per family (keep it in a `OnceLock`); a second
/// registration of the same name is logged and the family works unregistered.
///
/// ```
/// let lag = longshore::metrics::gauge_vec("my_source_lag_messages", "Messages waiting.", &["queue"]);
/// lag.with_label_values(&["orders"]).set(12);
/// ```
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::IntGaugeVec {
    let family = prometheus::IntGaugeVec::new(prometheus::Opts::new(name, help), labels)
        .expect("a valid metric name and labels");
    if let Err(error) = registry().register(Box::new(family.clone())) {
        tracing::warn!(%error, name, "metric not registered");
    }
    family
}
