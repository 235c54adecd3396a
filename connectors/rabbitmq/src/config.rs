//! The RabbitMQ source's settings.

use std::time::Duration;

use longshore::source::SourceSettings;
use longshore::BuildError;

/// Settings of a [`RabbitMqSource`](crate::RabbitMqSource), as a service's `[source]`
/// section gives them.
///
/// ```
/// use std::time::Duration;
/// use longshore_rabbitmq::RabbitMqConfig;
///
/// let config = RabbitMqConfig::new("amqp://127.0.0.1:5672/%2f", "orders");
/// assert_eq!(config.prefetch, None);
///
/// let config: RabbitMqConfig = toml::from_str(r#"
///     url = "amqp://rabbitmq:5672/%2f"
///     queue = "orders"
///     prefetch = 50
///     lag_interval = "5s"
/// "#).unwrap();
/// assert_eq!((config.prefetch, config.lag_interval), (Some(50), Duration::from_secs(5)));
/// ```
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RabbitMqConfig {
    /// The server: `amqp://user:password@host:port/vhost` (`%2f` is the default vhost).
    /// TLS (`amqps://`) is not supported yet, and refused at start.
    pub url: String,
    /// The queue consumed. It must exist: the source declares nothing, so that the
    /// queue's arguments (durability, dead-letter exchange, type) stay the operator's.
    pub queue: String,
    /// The most messages delivered and not yet acknowledged (`basic.qos`). Default: the
    /// pipeline's `max_in_flight`, so that the server delivers no more than the
    /// pipeline can hold; a larger value is refused at start.
    #[serde(default)]
    pub prefetch: Option<u16>,
    /// How often the queue's depth is read for the metrics (default 15 s).
    #[serde(default = "default_lag_interval", with = "humantime_serde")]
    pub lag_interval: Duration,
}

/// The URL's password is not shown.
impl std::fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("url", &redacted(&self.url))
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("lag_interval", &self.lag_interval)
            .finish()
    }
}

/// `url` with the password, if it has one, replaced by `***`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

fn default_lag_interval() -> Duration {
    Duration::from_secs(15)
}

impl RabbitMqConfig {
    /// Consumes `queue` on the server at `url`.
    pub fn new(url: impl Into<String>, queue: impl Into<String>) -> Self {
        RabbitMqConfig {
            url: url.into(),
            queue: queue.into(),
            prefetch: None,
            lag_interval: default_lag_interval(),
        }
    }

    /// Sets [`RabbitMqConfig::prefetch`].
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// Sets [`RabbitMqConfig::lag_interval`].
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.lag_interval = interval;
        self
    }
}

/// No server: a settings file must name one (`source.url`), or the start is refused.
impl Default for RabbitMqConfig {
    fn default() -> Self {
        RabbitMqConfig::new("", "")
    }
}

impl SourceSettings for RabbitMqConfig {
    fn validate(&self) -> Result<(), BuildError> {
        BuildError::require_set([
            ("source.url", self.url.as_str()),
            ("source.queue", self.queue.as_str()),
        ])?;
        if let Err(error) = self.url.parse::<lapin::uri::AMQPUri>() {
            return Err(BuildError::new(
                "source.url",
                format!("not an amqp:// URL: {error}"),
            ));
        }
        if self.url.starts_with("amqps:") {
            return Err(BuildError::new(
                "source.url",
                "amqps:// (TLS) is not supported yet: connect over amqp:// (a TLS sidecar or a private network)",
            ));
        }
        if self.prefetch == Some(0) {
            // 0 is "no limit" to the server: everything in the queue would be delivered.
            return Err(BuildError::new(
                "source.prefetch",
                "must be at least 1 (0 means no limit to the server)",
            ));
        }
        BuildError::require_durations([(
            "source.lag_interval",
            self.lag_interval,
            Duration::from_millis(100),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_naming_the_field() {
        let refused = |config: RabbitMqConfig| config.validate().unwrap_err().to_string();
        assert!(refused(RabbitMqConfig::default()).contains("source.url"));
        assert!(refused(RabbitMqConfig::new("amqp://h/%2f", "")).contains("source.queue"));
        assert!(refused(RabbitMqConfig::new("http://h", "q")).contains("source.url"));
        assert!(refused(RabbitMqConfig::new("amqp://h/%2f", "q").prefetch(0)).contains("source.prefetch"));
        assert!(
            refused(RabbitMqConfig::new("amqp://h/%2f", "q").lag_interval(Duration::ZERO))
                .contains("source.lag_interval")
        );
        assert!(refused(RabbitMqConfig::new("amqps://h/%2f", "q")).contains("TLS"));
        RabbitMqConfig::new("amqp://h/%2f", "q").validate().unwrap();
        let unknown = toml::from_str::<RabbitMqConfig>("url = \"amqp://h\"\nqueue = \"q\"\nprefech = 5");
        assert!(unknown.unwrap_err().to_string().contains("prefech"));
    }

    #[test]
    fn the_password_is_never_shown() {
        let config = RabbitMqConfig::new("amqp://orders:s3cret@rabbitmq:5672/%2f", "q");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("amqp://orders:***@rabbitmq:5672/%2f"),
            "{shown}"
        );
        assert_eq!(redacted("amqp://rabbitmq/%2f"), "amqp://rabbitmq/%2f");
    }
}
