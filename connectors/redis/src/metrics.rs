//! The stream's series on longshore's registry, read every `lag_interval`.

use std::sync::OnceLock;

use prometheus::{IntGauge, IntGaugeVec};

struct Families {
    length: IntGaugeVec,
    pending: IntGaugeVec,
    lag: IntGaugeVec,
}

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let gauge = |name: &str, help: &str| longshore::metrics::gauge_vec(name, help, &["stream", "group"]);
        Families {
            length: gauge("longshore_redis_stream_length", "Entries in the stream (XLEN)."),
            pending: gauge(
                "longshore_redis_group_pending",
                "Entries delivered to the group's consumers and not yet acknowledged (XPENDING).",
            ),
            lag: gauge(
                "longshore_redis_group_lag",
                "Entries of the stream not yet delivered to the group (XINFO GROUPS lag): the lag.",
            ),
        }
    })
}

/// One stream's gauges, for one group.
#[derive(Debug, Clone)]
pub(crate) struct StreamMetrics {
    pub(crate) length: IntGauge,
    pub(crate) pending: IntGauge,
    pub(crate) lag: IntGauge,
}

impl StreamMetrics {
    pub(crate) fn new(stream: &str, group: &str) -> Self {
        let families = families();
        let labels = [stream, group];
        StreamMetrics {
            length: families.length.with_label_values(&labels),
            pending: families.pending.with_label_values(&labels),
            lag: families.lag.with_label_values(&labels),
        }
    }
}
