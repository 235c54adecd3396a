//! The queue's series on longshore's registry, read every `lag_interval`.

use std::sync::OnceLock;

use prometheus::{IntGauge, IntGaugeVec};

struct Families {
    ready: IntGaugeVec,
    leased: IntGaugeVec,
    failed: IntGaugeVec,
    oldest_age: IntGaugeVec,
}

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let gauge = |name: &str, help: &str| longshore::metrics::gauge_vec(name, help, &["table", "queue"]);
        Families {
            ready: gauge(
                "longshore_postgres_queue_ready_rows",
                "Rows of the queue that a consumer may lease now: the lag.",
            ),
            leased: gauge(
                "longshore_postgres_queue_leased_rows",
                "Rows of the queue leased to some consumer (or waiting out a retry's backoff).",
            ),
            failed: gauge(
                "longshore_postgres_queue_failed_rows",
                "Rows of the queue failed for good with no dead-letter destination, kept in the table.",
            ),
            oldest_age: gauge(
                "longshore_postgres_queue_oldest_age_seconds",
                "Age of the oldest row of the queue not yet done; 0 when there is none.",
            ),
        }
    })
}

/// One queue's gauges.
#[derive(Debug, Clone)]
pub(crate) struct QueueMetrics {
    pub(crate) ready: IntGauge,
    pub(crate) leased: IntGauge,
    pub(crate) failed: IntGauge,
    pub(crate) oldest_age: IntGauge,
}

impl QueueMetrics {
    pub(crate) fn new(table: &str, queue: &str) -> Self {
        let families = families();
        let labels = [table, queue];
        QueueMetrics {
            ready: families.ready.with_label_values(&labels),
            leased: families.leased.with_label_values(&labels),
            failed: families.failed.with_label_values(&labels),
            oldest_age: families.oldest_age.with_label_values(&labels),
        }
    }
}
