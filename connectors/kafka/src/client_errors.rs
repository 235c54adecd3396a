//! librdkafka's errors, counted per consumer group and error code, so that a wrong
//! password or a batch that cannot be read shows on a dashboard and fires an alert
//! instead of scrolling past in the log.

use std::sync::OnceLock;

use prometheus::IntCounterVec;
use rdkafka::error::KafkaError;

/// `longshore_kafka_client_errors_total{consumergroup, error}` for one consumer group.
pub(crate) struct ClientErrors {
    group: String,
}

impl ClientErrors {
    pub(crate) fn new(group: &str) -> Self {
        ClientErrors {
            group: group.to_owned(),
        }
    }

    /// Counts `error` under its librdkafka code (`Authentication`, `BadCompression`,
    /// `AllBrokersDown`, ...): a bounded set of label values.
    pub(crate) fn count(&self, error: &KafkaError) {
        let code = error
            .rdkafka_error_code()
            .map_or_else(|| "Other".to_owned(), |code| format!("{code:?}"));
        family().with_label_values(&[self.group.as_str(), &code]).inc();
    }
}

fn family() -> &'static IntCounterVec {
    static FAMILY: OnceLock<IntCounterVec> = OnceLock::new();
    FAMILY.get_or_init(|| {
        let family = IntCounterVec::new(
            prometheus::Opts::new(
                "longshore_kafka_client_errors_total",
                "Errors librdkafka reported to the consumer, by error code.",
            ),
            &["consumergroup", "error"],
        )
        .expect("a valid metric");
        longshore::metrics::registry()
            .register(Box::new(family.clone()))
            .expect("the kafka client error metric is registered once");
        family
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn counts_each_error_under_its_group_and_code() {
        let errors = ClientErrors::new("unit-errors");
        errors.count(&KafkaError::MessageConsumption(RDKafkaErrorCode::Authentication));
        errors.count(&KafkaError::MessageConsumption(RDKafkaErrorCode::Authentication));
        errors.count(&KafkaError::Canceled);
        let count = |code: &str| family().with_label_values(&["unit-errors", code]).get();
        assert_eq!((count("Authentication"), count("Other")), (2, 1));
    }
}
