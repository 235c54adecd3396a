//! The consumer's series on longshore's registry, read every `lag_interval`.

use std::sync::OnceLock;

use prometheus::{IntGauge, IntGaugeVec};

struct Families {
    pending: IntGaugeVec,
    ack_pending: IntGaugeVec,
}

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let gauge =
            |name: &str, help: &str| longshore::metrics::gauge_vec(name, help, &["stream", "consumer"]);
        Families {
            pending: gauge(
                "longshore_nats_consumer_pending_messages",
                "Messages of the stream not yet delivered to the consumer (num_pending): the lag.",
            ),
            ack_pending: gauge(
                "longshore_nats_consumer_ack_pending_messages",
                "Messages delivered to the consumer and not yet acknowledged (num_ack_pending).",
            ),
        }
    })
}

/// One consumer's gauges.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerMetrics {
    pub(crate) pending: IntGauge,
    pub(crate) ack_pending: IntGauge,
}

impl ConsumerMetrics {
    pub(crate) fn new(stream: &str, consumer: &str) -> Self {
        let families = families();
        ConsumerMetrics {
            pending: families.pending.with_label_values(&[stream, consumer]),
            ack_pending: families.ack_pending.with_label_values(&[stream, consumer]),
        }
    }
}
