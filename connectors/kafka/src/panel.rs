//! The source's partitions for the topology page, the stall watch and the control
//! surface: per partition its lag, what is out in the pipeline, whether an operator
//! paused it, and how long it has been stuck; a pause per partition or topic.

use std::sync::Arc;
use std::time::Duration;

use longshore::source::{SourcePanel, SourcePart};

use crate::assignment::Shared;
use crate::{KafkaLag, KafkaPause, KafkaStatus};

/// Kafka's longest topic name.
const MAX_TOPIC_LEN: usize = 249;

/// The panel of a [`KafkaSource`](crate::KafkaSource): parts are `topic/partition`; a
/// pause takes a part or a whole `topic`.
pub(crate) struct KafkaPanel {
    pub(crate) shared: Arc<Shared>,
    pub(crate) lag: KafkaLag,
    /// The subscription: names, or regular expressions starting with `^`.
    pub(crate) topics: Arc<[String]>,
}

impl KafkaPanel {
    /// Whether `topic` could be one of the subscription's.
    fn check_topic(&self, topic: &str) -> Result<(), String> {
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if matches!(topic, "" | "." | "..") || topic.len() > MAX_TOPIC_LEN || !topic.chars().all(legal) {
            return Err(format!("{topic:?} is not a Kafka topic name"));
        }
        let by_pattern = self.topics.iter().any(|t| t.starts_with('^'));
        if !by_pattern && !self.topics.iter().any(|t| t == topic) {
            return Err(format!(
                "{topic} is not a topic this source subscribes to ({})",
                self.topics.join(", ")
            ));
        }
        Ok(())
    }
}

/// The most topics and partitions an operator may hold paused at once: each is kept
/// until resumed, whether the consumer has it or not.
const MAX_PAUSED: usize = 1024;

/// `topic/partition`, or a whole topic.
fn parse(part: &str) -> (&str, Option<&str>) {
    match part.rsplit_once('/') {
        Some((topic, partition)) => (topic, Some(partition)),
        None => (part, None),
    }
}

impl SourcePanel for KafkaPanel {
    fn parts(&self) -> Vec<SourcePart> {
        let lags = self.lag.snapshot();
        KafkaStatus(self.shared.clone())
            .partitions()
            .into_iter()
            .map(|p| {
                // Out in the pipeline: the records queued here wait on the pipeline's
                // demand (a paused pipeline asks for none), not on a handler.
                let mut part = SourcePart::new(format!("{}/{}", p.topic, p.partition))
                    .in_flight(p.in_flight as u64)
                    // In effect, not only asked for: librdkafka may refuse it for a while.
                    .paused(p.held);
                let lag = lags
                    .iter()
                    .find(|l| l.topic == p.topic && l.partition == p.partition);
                if let Some(lag) = lag {
                    part = part
                        .waiting(u64::try_from(lag.lag).unwrap_or(0))
                        .waiting_seconds(lag.lag_seconds)
                        .stalled_for(Duration::from_secs_f64(lag.stalled_seconds.max(0.0)));
                }
                part
            })
            .collect()
    }

    fn check_pause(&self, part: &str) -> Result<(), String> {
        let (topic, partition) = parse(part);
        self.check_topic(topic)?;
        // One spelling per partition (no `+3`, no `03`): a pause is resumed by its name.
        match partition.map(|p| (p, p.parse::<i32>())) {
            None => {}
            Some((text, Ok(n @ 0..))) if n.to_string() == text => {}
            Some(_) => return Err(format!("{part}: the partition must be a number, 0 or more")),
        }
        let pause = KafkaPause(self.shared.clone());
        let (partitions, topics) = pause.paused();
        let held = partitions.len() + topics.len();
        // Held by its own name: a partition of a paused topic is a new entry still.
        let already = match partition.and_then(|p| p.parse::<i32>().ok()) {
            Some(partition) => partitions.iter().any(|(t, p)| t == topic && *p == partition),
            None => topics.iter().any(|t| t == topic),
        };
        if held >= MAX_PAUSED && !already {
            return Err(format!(
                "{MAX_PAUSED} topics and partitions are paused already: resume some first"
            ));
        }
        Ok(())
    }

    fn set_paused(&self, part: &str, paused: bool) -> bool {
        let (topic, partition) = parse(part);
        let partition = match partition.map(str::parse) {
            None => None,
            Some(Ok(partition)) => Some(partition),
            Some(Err(_)) => return false,
        };
        KafkaPause(self.shared.clone()).set(topic, partition, paused)
    }

    fn attach(&self, changes: longshore::source::PartChanges) {
        let _ = self.shared.changes.set(changes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(topics: &[&str]) -> KafkaPanel {
        KafkaPanel {
            shared: Shared::new(16),
            lag: KafkaLag::default(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn a_pause_takes_a_partition_or_a_topic_of_the_subscription_and_nothing_else() {
        let panel = panel(&["orders", "refunds"]);
        assert_eq!(panel.check_pause("orders/3"), Ok(()));
        assert_eq!(panel.check_pause("refunds"), Ok(()));
        assert!(panel.check_pause("orders/-1").unwrap_err().contains("0 or more"));
        assert!(panel
            .check_pause("orders/x")
            .unwrap_err()
            .contains("must be a number"));
        assert!(panel
            .check_pause("payments/0")
            .unwrap_err()
            .contains("not a topic this source subscribes to"));
        assert!(panel
            .check_pause("../etc")
            .unwrap_err()
            .contains("not a Kafka topic name"));
        assert!(panel.check_pause("").is_err());
        // One spelling per partition: what is paused as `orders/3` is resumed as it.
        for other_spelling in ["orders/+3", "orders/03", "orders/ 3"] {
            assert!(panel.check_pause(other_spelling).is_err(), "{other_spelling}");
        }
        // A pattern subscription takes any legal name.
        assert_eq!(self::panel(&["^orders-.*"]).check_pause("orders-eu/1"), Ok(()));
    }

    #[test]
    fn set_paused_says_whether_it_changed_anything() {
        let panel = panel(&["orders"]);
        assert!(panel.set_paused("orders/3", true));
        assert!(!panel.set_paused("orders/3", true), "already paused");
        assert!(panel.set_paused("orders", true));
        assert!(KafkaPause(panel.shared.clone()).is_paused("orders", 7));
        assert!(panel.set_paused("orders", false));
        assert!(panel.set_paused("orders/3", false));
        assert_eq!(KafkaPause(panel.shared.clone()).paused(), (vec![], vec![]));
    }

    #[test]
    fn the_pauses_an_operator_may_hold_are_bounded() {
        let panel = panel(&["orders"]);
        for partition in 0..MAX_PAUSED {
            assert_eq!(panel.check_pause(&format!("orders/{partition}")), Ok(()));
            assert!(panel.set_paused(&format!("orders/{partition}"), true));
        }
        let refused = panel.check_pause(&format!("orders/{MAX_PAUSED}")).unwrap_err();
        assert!(refused.contains("resume some first"), "{refused}");
        assert!(panel.check_pause("orders").is_err(), "a topic counts too");
        // What is held already may be named again, and resumed.
        assert_eq!(panel.check_pause("orders/7"), Ok(()));
    }
}
