//! The JetStream source's settings.

use std::time::Duration;

use longshore::source::SourceSettings;
use longshore::BuildError;

/// Settings of a [`JetStreamSource`](crate::JetStreamSource), as a service's `[source]`
/// section gives them.
///
/// ```
/// use std::time::Duration;
/// use longshore_nats::JetStreamConfig;
///
/// let config = JetStreamConfig::new("nats://127.0.0.1:4222", "ORDERS", "billing");
/// assert_eq!(config.ack_wait, Duration::from_secs(30));
///
/// let config: JetStreamConfig = toml::from_str(r#"
///     url = "nats://nats:4222"
///     stream = "ORDERS"
///     consumer = "billing"
///     ack_wait = "1m"
/// "#).unwrap();
/// assert_eq!(config.ack_wait, Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JetStreamConfig {
    /// The server: `nats://host:port`.
    pub url: String,
    /// The stream.
    pub stream: String,
    /// The durable pull consumer: created if missing (explicit acks, from the stream's
    /// start), used as it is otherwise.
    pub consumer: String,
    /// When the consumer is created, how long a delivered message may go unacknowledged
    /// before the server delivers it again (default 30 s). The source sends progress
    /// (`+WPI`) for the messages it is handling three times per `ack_wait`, so a long
    /// job is not delivered twice.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// How long one fetch waits for messages (default 2 s).
    #[serde(default = "default_expires", with = "humantime_serde")]
    pub expires: Duration,
    /// How often the consumer's pending and unacknowledged counts are read for the
    /// metrics (default 15 s).
    #[serde(default = "default_lag_interval", with = "humantime_serde")]
    pub lag_interval: Duration,
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}

fn default_expires() -> Duration {
    Duration::from_secs(2)
}

fn default_lag_interval() -> Duration {
    Duration::from_secs(15)
}

impl JetStreamConfig {
    /// Consumes `stream` through the durable consumer `consumer` on the server at `url`.
    pub fn new(url: impl Into<String>, stream: impl Into<String>, consumer: impl Into<String>) -> Self {
        JetStreamConfig {
            url: url.into(),
            stream: stream.into(),
            consumer: consumer.into(),
            ack_wait: default_ack_wait(),
            expires: default_expires(),
            lag_interval: default_lag_interval(),
        }
    }

    /// Sets [`JetStreamConfig::ack_wait`].
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Sets [`JetStreamConfig::expires`].
    pub fn expires(mut self, expires: Duration) -> Self {
        self.expires = expires;
        self
    }

    /// Sets [`JetStreamConfig::lag_interval`].
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.lag_interval = interval;
        self
    }
}

/// No server: a settings file must name one (`source.url`), or the start is refused.
impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig::new("", "", "")
    }
}

impl SourceSettings for JetStreamConfig {
    fn validate(&self) -> Result<(), BuildError> {
        BuildError::require_set([
            ("source.url", self.url.as_str()),
            ("source.stream", self.stream.as_str()),
            ("source.consumer", self.consumer.as_str()),
        ])?;
        BuildError::require_durations([
            ("source.ack_wait", self.ack_wait, Duration::from_secs(1)),
            ("source.expires", self.expires, Duration::from_millis(100)),
            (
                "source.lag_interval",
                self.lag_interval,
                Duration::from_millis(100),
            ),
        ])?;
        if self.expires >= self.ack_wait {
            return Err(BuildError::new(
                "source.expires",
                "must be shorter than source.ack_wait",
            ));
        }
        Ok(())
    }
}
