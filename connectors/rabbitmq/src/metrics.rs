//! The queue's series on longshore's registry, read every `lag_interval`.

use std::sync::OnceLock;

use prometheus::{IntGauge, IntGaugeVec};

struct Families {
    ready: IntGaugeVec,
    consumers: IntGaugeVec,
}

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let gauge = |name: &str, help: &str| longshore::metrics::gauge_vec(name, help, &["queue"]);
        Families {
            ready: gauge(
                "longshore_rabbitmq_queue_ready_messages",
                "Messages of the queue ready for delivery (not counting those delivered and unacknowledged): the lag.",
            ),
            consumers: gauge(
                "longshore_rabbitmq_queue_consumers",
                "Consumers of the queue, this one included.",
            ),
        }
    })
}

/// One queue's gauges.
#[derive(Debug, Clone)]
pub(crate) struct QueueMetrics {
    pub(crate) ready: IntGauge,
    pub(crate) consumers: IntGauge,
}

impl QueueMetrics {
    pub(crate) fn new(queue: &str) -> Self {
        let families = families();
        QueueMetrics {
            ready: families.ready.with_label_values(&[queue]),
            consumers: families.consumers.with_label_values(&[queue]),
        }
    }
}
