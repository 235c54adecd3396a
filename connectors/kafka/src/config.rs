//! The Kafka source's settings, checked at start with errors that name the field.

use std::collections::BTreeMap;
use std::time::Duration;

use longshore::BuildError;
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

/// Parts of a property's name that say its value is a secret, never repeated in an error.
const SECRET: [&str; 4] = ["password", "secret", "key", "oauthbearer.config"];

/// How the Kafka source orders the handling of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// One partition's messages are handled one after the other, in offset order
    /// (Kafka's own guarantee). Concurrency is at most the number of partitions.
    #[default]
    Partition,
    /// One key's messages (within a partition) are handled in offset order; different
    /// keys of a partition concurrently. Offsets are still committed contiguously.
    Key,
    /// No order: any processor takes any message.
    Unordered,
}

/// Settings of a [`KafkaSource`](crate::KafkaSource).
///
/// ```
/// use std::time::Duration;
/// use longshore_kafka::{KafkaConfig, Ordering};
///
/// let config = KafkaConfig::new("127.0.0.1:9092", "orders-service", ["orders"])
///     .ordering(Ordering::Key)
///     .commit_interval(Duration::from_secs(2))
///     .property("security.protocol", "plaintext");
/// assert!(config.validate().is_ok());
///
/// let error = KafkaConfig::new("", "g", ["t"]).validate().unwrap_err();
/// assert_eq!(error.to_string(), "invalid source.bootstrap_servers: must not be empty");
///
/// // Incremental rebalances: only the moved partitions stop.
/// let cooperative = KafkaConfig::new("127.0.0.1:9092", "g", ["t"])
///     .property("partition.assignment.strategy", "cooperative-sticky");
/// assert!(cooperative.validate().is_ok());
///
/// let owned = KafkaConfig::new("127.0.0.1:9092", "g", ["t"]).property("enable.auto.commit", "true");
/// assert_eq!(owned.validate().unwrap_err().field, "source.properties.enable.auto.commit");
/// ```
///
/// In a service's settings file (see `longshore::service`), the `[source]` section:
///
/// ```
/// let config: longshore_kafka::KafkaConfig = toml::from_str(r#"
///     bootstrap_servers = "kafka-0:9092,kafka-1:9092"
///     group_id = "orders-service"
///     topics = ["orders"]
///     ordering = "key"
///     commit_interval = "2s"
///     properties = { "security.protocol" = "sasl_ssl", "sasl.mechanism" = "SCRAM-SHA-512" }
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default = "KafkaConfig::unset", deny_unknown_fields)]
pub struct KafkaConfig {
    pub(crate) bootstrap_servers: String,
    pub(crate) group_id: String,
    pub(crate) topics: Vec<String>,
    pub(crate) properties: BTreeMap<String, String>,
    #[serde(with = "humantime_serde")]
    pub(crate) commit_interval: Duration,
    pub(crate) max_buffered_per_partition: usize,
    pub(crate) ordering: Ordering,
    #[serde(with = "humantime_serde")]
    pub(crate) revoke_drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) lag_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) close_timeout: Duration,
}

impl Default for KafkaConfig {
    /// Nothing to connect to yet: [`KafkaConfig::validate`] names what is missing.
    fn default() -> Self {
        KafkaConfig::unset()
    }
}

/// Properties the source sets itself: overriding them would break its guarantees.
const OWNED_PROPERTIES: [&str; 5] = [
    "statistics.interval.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "bootstrap.servers",
    "group.id",
];

impl KafkaConfig {
    /// Consume `topics` (names, or regular expressions starting with `^`) from the
    /// cluster at `bootstrap_servers` in consumer group `group_id`.
    pub fn new(
        bootstrap_servers: impl Into<String>,
        group_id: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            group_id: group_id.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            properties: BTreeMap::new(),
            commit_interval: Duration::from_secs(5),
            max_buffered_per_partition: 1_000,
            ordering: Ordering::Partition,
            revoke_drain_timeout: Duration::from_secs(10),
            lag_interval: Duration::from_secs(15),
            close_timeout: Duration::from_secs(10),
        }
    }

    fn unset() -> Self {
        KafkaConfig::new("", "", Vec::<String>::new())
    }

    /// The cluster's bootstrap servers, as given.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Any librdkafka property (TLS, SASL, timeouts, `auto.offset.reset`, ...), passed
    /// through as given, except those the source owns (`enable.auto.commit`,
    /// `enable.auto.offset.store`, `bootstrap.servers`, `group.id`). Eager and incremental
    /// rebalancing are both supported (`partition.assignment.strategy`: `range`,
    /// `roundrobin` or `cooperative-sticky`; not eager and incremental mixed).
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// How often the acknowledged prefix of each partition is committed (default 5 s).
    /// It is also committed on revoke and at shutdown.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// The most records fetched ahead of demand, over all partitions, and what one
    /// partition may hold between fetch and acknowledgement (default 1,000). A poll takes
    /// no more from librdkafka (whose prefetch is bounded too) than the queue has room
    /// for; once it is full, one record a commit interval while the poll thread serves
    /// the group, until a second in which the pipeline takes nothing pauses the
    /// partitions. A partition is stalled when its share of the pipeline's
    /// `max_in_flight` is handed out and its queue has not emptied for 250 ms (behind a
    /// record that never finishes, or handled slower than it is fetched): its queued
    /// records then leave the count of that bound, and it is paused once it holds this
    /// many records, queued and out, until acknowledgements bring it to half. A partition
    /// whose queue empties within 250 ms is not paused: pausing drops librdkafka's
    /// prefetch, a fetch round trip to get back. One partition holds at most this many
    /// records queued and its share handed out, and past that at most two of the poll
    /// thread's handoffs of 512 records.
    pub fn max_buffered_per_partition(mut self, max: usize) -> Self {
        self.max_buffered_per_partition = max;
        self
    }

    /// How messages are ordered (default [`Ordering::Partition`]).
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.ordering = ordering;
        self
    }

    /// On revoke, how long the in-flight messages of the revoked partitions may take to
    /// finish before the commit and the release (default 10 s). It must be below the
    /// group's rebalance timeout, librdkafka's `max.poll.interval.ms` (300 s by default):
    /// the revoke holds the rebalance meanwhile.
    pub fn revoke_drain_timeout(mut self, timeout: Duration) -> Self {
        self.revoke_drain_timeout = timeout;
        self
    }

    /// How often the consumer's lag is refreshed (default 15 s): from librdkafka's
    /// statistics (`statistics.interval.ms`, which this sets), with no request to the
    /// brokers, so a slow broker never holds consumption back.
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.lag_interval = interval;
        self
    }

    /// At shutdown, how long the final commit and leaving the group may take (default
    /// 10 s). A consumer that has not closed by then is left behind so that the service
    /// can exit; whatever it had not committed is consumed again, never lost. The close
    /// is the acknowledger's flush, so it also ends with the pipeline's shutdown deadline
    /// plus [`HAND_BACK_TIME`](longshore::HAND_BACK_TIME): the Helm chart's grace period
    /// (the deadline plus `terminationGraceExtraSeconds`, 15 s) covers both.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<(), BuildError> {
        let empty = |field: &str| BuildError::new(format!("source.{field}"), "must not be empty");
        if self.bootstrap_servers.trim().is_empty() {
            return Err(empty("bootstrap_servers"));
        }
        if self.group_id.trim().is_empty() {
            return Err(empty("group_id"));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(empty("topics"));
        }
        if self.max_buffered_per_partition == 0 {
            return Err(BuildError::at_least("source.max_buffered_per_partition", 1, 0));
        }
        if self.commit_interval.is_zero() {
            return Err(BuildError::new("source.commit_interval", "must be above zero"));
        }
        // A revoke holds the group's rebalance until its drain ends; past librdkafka's
        // `max.poll.interval.ms` (the rebalance timeout) the consumer would be expelled.
        let rebalance_timeout = self.rebalance_timeout()?;
        if self.lag_interval.is_zero() {
            return Err(BuildError::new("source.lag_interval", "must be above zero"));
        }
        if self.revoke_drain_timeout >= rebalance_timeout {
            return Err(BuildError::new(
                "source.revoke_drain_timeout",
                format!(
                    "must be below max.poll.interval.ms ({rebalance_timeout:?}), got {:?}",
                    self.revoke_drain_timeout
                ),
            ));
        }
        if let Some(strategies) = self.properties.get("partition.assignment.strategy") {
            let cooperative = strategies
                .split(',')
                .filter(|s| s.trim() == "cooperative-sticky")
                .count();
            if cooperative > 0 && cooperative < strategies.split(',').count() {
                // librdkafka refuses the mix too, but without naming the setting.
                return Err(BuildError::new(
                    "source.properties.partition.assignment.strategy",
                    format!("cannot mix cooperative-sticky with eager strategies, got {strategies:?}"),
                ));
            }
        }
        if let Some(owned) = OWNED_PROPERTIES
            .iter()
            .find(|p| self.properties.contains_key(**p))
        {
            return Err(BuildError::new(
                format!("source.properties.{owned}"),
                "is set by the source itself and cannot be overridden",
            ));
        }
        // librdkafka's own check of each property, as the consumer would make it at
        // start, but naming the setting: its error alone reads `Client config error`.
        // Not with plugins: setting their path loads them, and their properties exist
        // only once loaded (the consumer's creation reports those).
        if self.properties.contains_key("plugin.library.paths") {
            return Ok(());
        }
        match self.client_config().create_native_config() {
            Err(KafkaError::ClientConfig(_, description, key, value)) => Err(BuildError::new(
                if self.properties.contains_key(&key) {
                    format!("source.properties.{key}")
                } else {
                    format!("source ({key})")
                },
                if SECRET.iter().any(|s| key.contains(s)) {
                    description
                } else {
                    format!("{description} (got {value:?})")
                },
            )),
            Err(other) => Err(BuildError::new("source.properties", other.to_string())),
            Ok(_) => Ok(()),
        }
    }

    /// librdkafka's `max.poll.interval.ms`: the rebalance timeout, and how long the poll
    /// thread may go without polling before the group expels the consumer.
    pub(crate) fn rebalance_timeout(&self) -> Result<Duration, BuildError> {
        match self.properties.get("max.poll.interval.ms") {
            Some(ms) => Ok(Duration::from_millis(ms.trim().parse().map_err(|_| {
                BuildError::new(
                    "source.properties.max.poll.interval.ms",
                    format!("must be a number of milliseconds, got {ms:?}"),
                )
            })?)),
            None => Ok(Duration::from_secs(300)),
        }
    }

    /// How to reach and log in to the cluster, for another client of it (the dead-letter
    /// producer): the bootstrap servers and the connection and security properties.
    pub(crate) fn connection_config(&self) -> ClientConfig {
        const CONNECTION: [&str; 6] = ["security.", "ssl.", "sasl.", "enable.ssl.", "socket.", "client."];
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (key, value) in &self.properties {
            if CONNECTION.iter().any(|prefix| key.starts_with(prefix)) {
                config.set(key, value);
            }
        }
        config
    }

    /// The librdkafka configuration: the user's properties, then the source's own.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        // Bound librdkafka's own prefetch: memory follows demand, not the backlog.
        config.set("queued.max.messages.kbytes", "32768");
        // The pipeline drains that prefetch in bursts; past the bound, librdkafka waits this
        // long before fetching again (1 s by default: a whole second of idle consumer).
        config.set("fetch.queue.backoff.ms", "20");
        // A partition that becomes fetchable (assigned, resumed) waits for the fetch in
        // flight: cap that wait at 100 ms rather than 500 (idle cost: 10 empty fetches a
        // second per broker).
        config.set("fetch.wait.max.ms", "100");
        config.set("auto.offset.reset", "earliest");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // The lag comes from librdkafka's statistics (high watermarks it caches from
            // fetch responses): no broker round trip on the poll thread.
            .set(
                "statistics.interval.ms",
                self.lag_interval.as_millis().clamp(1, 86_400_000).to_string(),
            );
        config
    }
}

/// Checked when a service's settings file is loaded: every field, named `source.<field>`.
impl longshore::source::SourceSettings for KafkaConfig {
    fn validate(&self) -> Result<(), BuildError> {
        KafkaConfig::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_charts_grace_beyond_the_deadline_covers_the_hand_back_and_the_close() {
        let values = include_str!("../../../helm/longshore/values.yaml");
        let extra: u64 = values
            .lines()
            .find_map(|line| line.strip_prefix("terminationGraceExtraSeconds:"))
            .and_then(|seconds| seconds.trim().parse().ok())
            .expect("values.yaml sets terminationGraceExtraSeconds");
        let needed = longshore::HAND_BACK_TIME + KafkaConfig::new("b", "g", ["t"]).close_timeout;
        assert!(
            Duration::from_secs(extra) >= needed,
            "terminationGraceExtraSeconds {extra} s < hand-back and close, {needed:?}"
        );
    }

    fn with_strategy(strategy: &str) -> Result<(), BuildError> {
        KafkaConfig::new("127.0.0.1:9092", "g", ["t"])
            .property("partition.assignment.strategy", strategy)
            .validate()
    }

    #[test]
    fn a_property_librdkafka_refuses_is_named_in_the_settings_terms() {
        let with = |key: &str, value: &str| {
            KafkaConfig::new("localhost:9092", "g", ["t"])
                .property(key, value)
                .validate()
                .unwrap_err()
        };
        let unknown = with("no.such.property", "1");
        assert_eq!(unknown.field, "source.properties.no.such.property");
        assert!(
            unknown.reason.contains("No such configuration property"),
            "{unknown}"
        );
        let invalid = with("session.timeout.ms", "soon");
        assert_eq!(invalid.field, "source.properties.session.timeout.ms");
        assert!(invalid.reason.contains("Invalid value"), "{invalid}");
        assert!(KafkaConfig::new("localhost:9092", "g", ["t"])
            .property("session.timeout.ms", "45000")
            .validate()
            .is_ok());
    }

    #[test]
    fn eager_or_incremental_strategies_are_accepted_but_not_mixed() {
        assert!(with_strategy("range,roundrobin").is_ok());
        assert!(with_strategy("cooperative-sticky").is_ok());
        let error = with_strategy("range, cooperative-sticky").unwrap_err();
        assert_eq!(error.field, "source.properties.partition.assignment.strategy");
        assert!(error.to_string().contains("cannot mix"), "{error}");
    }

    #[test]
    fn the_revoke_drain_must_end_within_the_rebalance_timeout() {
        let config = KafkaConfig::new("127.0.0.1:9092", "g", ["t"]);
        assert!(config
            .clone()
            .revoke_drain_timeout(Duration::from_secs(299))
            .validate()
            .is_ok());
        let error = config
            .clone()
            .revoke_drain_timeout(Duration::from_secs(300))
            .validate()
            .unwrap_err();
        assert_eq!(error.field, "source.revoke_drain_timeout");
        let shorter = config.property("max.poll.interval.ms", "20000");
        let error = shorter
            .clone()
            .revoke_drain_timeout(Duration::from_secs(20))
            .validate()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid source.revoke_drain_timeout: must be below max.poll.interval.ms (20s), got 20s"
        );
        let error = shorter
            .property("max.poll.interval.ms", "soon")
            .validate()
            .unwrap_err();
        assert_eq!(error.field, "source.properties.max.poll.interval.ms");
    }
}
