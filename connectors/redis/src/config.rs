//! The Redis Streams source's settings.

use std::time::Duration;

use longshore::source::SourceSettings;
use longshore::BuildError;

/// Settings of a [`RedisStreamSource`](crate::RedisStreamSource), as a service's
/// `[source]` section gives them.
///
/// ```
/// use std::time::Duration;
/// use longshore_redis::RedisStreamConfig;
///
/// let config = RedisStreamConfig::new("redis://127.0.0.1:6379", "orders", "billing");
/// assert_eq!(config.field, "payload");
///
/// let config: RedisStreamConfig = toml::from_str(r#"
///     url = "redis://cache:6379"
///     stream = "orders"
///     group = "billing"
///     consumer = "billing-0"
///     claim_idle = "2m"
/// "#).unwrap();
/// assert_eq!(config.claim_idle, Duration::from_secs(120));
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisStreamConfig {
    /// The server: `redis://host:port/db` (plain connections; Redis 7.0 or newer).
    pub url: String,
    /// The stream's key.
    pub stream: String,
    /// The consumer group: created (with the stream, from its first entry) if missing.
    pub group: String,
    /// This consumer's name in the group (default: `$HOSTNAME`, else `longshore`). Keep
    /// it across restarts (a StatefulSet's pod name): a restarted consumer takes back its
    /// own unacknowledged entries at once; another one's are claimed after `claim_idle`.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// The entry field whose value is a message's data (default `payload`); every field
    /// is in the metadata.
    #[serde(default = "default_field")]
    pub field: String,
    /// An entry delivered to a consumer and not acknowledged for this long is claimed by
    /// another (default 30 s): a dead consumer's work comes back. The source resets the
    /// idle time of the entries it is handling three times per `claim_idle`.
    #[serde(default = "default_claim_idle", with = "humantime_serde")]
    pub claim_idle: Duration,
    /// How long one read waits for new entries once a read found none (default 2 s); a
    /// shutdown cuts the wait short (where the server lets the source run `CLIENT
    /// UNBLOCK`).
    #[serde(default = "default_block", with = "humantime_serde")]
    pub block: Duration,
    /// How often the stream's length and the group's pending count and lag are read for
    /// the metrics (default 15 s).
    #[serde(default = "default_lag_interval", with = "humantime_serde")]
    pub lag_interval: Duration,
}

fn default_consumer() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "longshore".to_owned())
}

fn default_field() -> String {
    "payload".to_owned()
}

fn default_claim_idle() -> Duration {
    Duration::from_secs(30)
}

fn default_block() -> Duration {
    Duration::from_secs(2)
}

fn default_lag_interval() -> Duration {
    Duration::from_secs(15)
}

impl RedisStreamConfig {
    /// Consumes `stream` as a member of `group` on the server at `url`.
    pub fn new(url: impl Into<String>, stream: impl Into<String>, group: impl Into<String>) -> Self {
        RedisStreamConfig {
            url: url.into(),
            stream: stream.into(),
            group: group.into(),
            consumer: default_consumer(),
            field: default_field(),
            claim_idle: default_claim_idle(),
            block: default_block(),
            lag_interval: default_lag_interval(),
        }
    }

    /// Sets [`RedisStreamConfig::consumer`].
    pub fn consumer(mut self, consumer: impl Into<String>) -> Self {
        self.consumer = consumer.into();
        self
    }

    /// Sets [`RedisStreamConfig::field`].
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }

    /// Sets [`RedisStreamConfig::claim_idle`].
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// Sets [`RedisStreamConfig::block`].
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// Sets [`RedisStreamConfig::lag_interval`].
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.lag_interval = interval;
        self
    }
}

/// No server: a settings file must name one (`source.url`), or the start is refused.
impl Default for RedisStreamConfig {
    fn default() -> Self {
        RedisStreamConfig::new("", "", "")
    }
}

impl SourceSettings for RedisStreamConfig {
    fn validate(&self) -> Result<(), BuildError> {
        BuildError::require_set([
            ("source.url", self.url.as_str()),
            ("source.stream", self.stream.as_str()),
            ("source.group", self.group.as_str()),
            ("source.consumer", self.consumer.as_str()),
            ("source.field", self.field.as_str()),
        ])?;
        BuildError::require_durations([
            ("source.claim_idle", self.claim_idle, Duration::from_secs(1)),
            ("source.block", self.block, Duration::from_millis(10)),
            (
                "source.lag_interval",
                self.lag_interval,
                Duration::from_millis(100),
            ),
        ])?;
        if self.block >= self.claim_idle {
            return Err(BuildError::new(
                "source.block",
                "must be shorter than source.claim_idle",
            ));
        }
        Ok(())
    }
}
