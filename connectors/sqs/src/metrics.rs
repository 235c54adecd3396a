//! The queue's series on longshore's registry: its depth and oldest message's age, and
//! the API calls the source makes (`queue` is the queue's name).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

struct Families {
    visible: IntGaugeVec,
    not_visible: IntGaugeVec,
    delayed: IntGaugeVec,
    oldest_age: IntGaugeVec,
    calls: IntCounterVec,
    extension_failures: IntCounterVec,
}

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let gauge = |name: &str, help: &str| {
            let family = IntGaugeVec::new(Opts::new(name, help), &["queue"]).expect("valid metric");
            register(Box::new(family.clone()));
            family
        };
        let calls = IntCounterVec::new(
            Opts::new("longshore_sqs_api_calls_total", "SQS API calls made by the source, by call."),
            &["queue", "call"],
        )
        .expect("valid metric");
        register(Box::new(calls.clone()));
        let extension_failures = IntCounterVec::new(
            Opts::new(
                "longshore_sqs_visibility_extension_failures_total",
                "Visibility extensions of held messages that SQS did not take (tried again in the next round).",
            ),
            &["queue"],
        )
        .expect("valid metric");
        register(Box::new(extension_failures.clone()));
        Families {
            visible: gauge(
                "longshore_sqs_messages_visible",
                "Messages available for retrieval (ApproximateNumberOfMessages).",
            ),
            not_visible: gauge(
                "longshore_sqs_messages_in_flight",
                "Messages received by some consumer and not yet deleted (ApproximateNumberOfMessagesNotVisible).",
            ),
            delayed: gauge(
                "longshore_sqs_messages_delayed",
                "Messages not yet available because of a delay (ApproximateNumberOfMessagesDelayed).",
            ),
            oldest_age: gauge(
                "longshore_sqs_oldest_message_age_seconds",
                "Age of the oldest message this source received in the last lag interval; 0 when the queue is empty.",
            ),
            calls,
            extension_failures,
        }
    })
}

fn register(collector: Box<dyn prometheus::core::Collector>) {
    if let Err(error) = longshore::metrics::registry().register(collector) {
        tracing::warn!(%error, "cannot register an sqs metric");
    }
}

/// One queue's series.
#[derive(Debug, Clone)]
pub(crate) struct QueueMetrics {
    queue: String,
    pub(crate) visible: IntGauge,
    pub(crate) not_visible: IntGauge,
    pub(crate) delayed: IntGauge,
    pub(crate) oldest_age: IntGauge,
    pub(crate) extension_failures: IntCounter,
    /// The earliest `SentTimestamp` (ms) received since the last lag reading.
    oldest_sent: Arc<AtomicU64>,
}

impl QueueMetrics {
    pub(crate) fn new(queue: &str) -> Self {
        let f = families();
        QueueMetrics {
            queue: queue.to_owned(),
            visible: f.visible.with_label_values(&[queue]),
            not_visible: f.not_visible.with_label_values(&[queue]),
            delayed: f.delayed.with_label_values(&[queue]),
            oldest_age: f.oldest_age.with_label_values(&[queue]),
            extension_failures: f.extension_failures.with_label_values(&[queue]),
            oldest_sent: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    /// Notes the send times of received messages.
    pub(crate) fn observe_age(&self, received: &[crate::SqsMetadata]) {
        if let Some(oldest) = received
            .iter()
            .filter_map(crate::SqsMetadata::sent_timestamp)
            .min()
        {
            self.oldest_sent.fetch_min(oldest, Ordering::Relaxed);
        }
    }

    /// The earliest send time observed since the last call.
    pub(crate) fn take_oldest_sent(&self) -> Option<u64> {
        Some(self.oldest_sent.swap(u64::MAX, Ordering::Relaxed)).filter(|&sent| sent != u64::MAX)
    }

    /// Counts one call of the API action `call`.
    pub(crate) fn call(&self, call: &str) {
        families()
            .calls
            .with_label_values(&[self.queue.as_str(), call])
            .inc();
    }
}
