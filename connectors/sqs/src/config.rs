//! The SQS source's settings, checked at start with errors that name the field.

use std::time::Duration;

use longshore::BuildError;

/// What happens to a message after its last attempt failed. Unset (the default), the
/// source chooses so that each poison message ends in exactly one dead-letter queue:
/// deleted once the pipeline's dead-letter destination took it, redriven when the
/// pipeline has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalFailure {
    /// Made visible again at once, so that the queue's redrive policy moves it to the
    /// queue's dead-letter queue on its next receive. Set the queue's `maxReceiveCount`
    /// to the pipeline's `max_attempts`; without a redrive policy the message comes
    /// back forever (the source warns at start). Refused with a pipeline dead-letter
    /// destination: the message would be dead-lettered twice.
    Redrive,
    /// Deleted: after the pipeline's dead-letter destination (an
    /// [`SqsDeadLetter`](crate::SqsDeadLetter), say) has taken it, or, with none, dropped
    /// (counted and logged by the pipeline as discarded).
    Delete,
}

/// How the SQS source orders the handling of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// One `MessageGroupId`'s messages are handled one after the other, in the order
    /// received, retries included (FIFO queues). On a standard queue, which has no
    /// groups, nothing is ordered: any free processor takes any message.
    #[default]
    Group,
    /// No order: any processor takes any message.
    Unordered,
}

/// Settings of an [`SqsSource`](crate::SqsSource).
///
/// Credentials come from the AWS SDK's standard chain: the environment, the profile,
/// web identity (Kubernetes service accounts), the container or instance role.
///
/// ```
/// use std::time::Duration;
/// use longshore_sqs::SqsConfig;
///
/// let config = SqsConfig::new("https://sqs.eu-west-1.amazonaws.com/123456789012/orders")
///     .receive_concurrency(20)
///     .visibility_timeout(Duration::from_secs(60));
/// assert!(config.validate().is_ok());
///
/// let error = SqsConfig::new("orders").wait_time(Duration::from_secs(30)).validate().unwrap_err();
/// assert_eq!(error.to_string(), "invalid source.wait_time: must be at most 20s, got 30s");
/// ```
///
/// In a service's settings file (see `longshore::service`), the `[source]` section:
///
/// ```
/// let config: longshore_sqs::SqsConfig = toml::from_str(r#"
///     queue = "orders.fifo"
///     region = "eu-west-1"
///     receive_concurrency = 4
///     wait_time = "10s"
///     on_final_failure = "delete"
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default = "SqsConfig::unset", deny_unknown_fields)]
pub struct SqsConfig {
    pub(crate) queue: String,
    pub(crate) region: Option<String>,
    pub(crate) endpoint_url: Option<String>,
    pub(crate) receive_concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub(crate) wait_time: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) visibility_timeout: Option<Duration>,
    pub(crate) extend_visibility: bool,
    pub(crate) attribute_names: Vec<String>,
    pub(crate) message_attribute_names: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub(crate) delete_interval: Duration,
    pub(crate) on_final_failure: Option<FinalFailure>,
    pub(crate) ordering: Ordering,
    #[serde(with = "humantime_serde")]
    pub(crate) lag_interval: Duration,
}

impl Default for SqsConfig {
    /// No queue yet: [`SqsConfig::validate`] names what is missing.
    fn default() -> Self {
        SqsConfig::unset()
    }
}

/// SQS's own limits.
const MAX_WAIT: Duration = Duration::from_secs(20);
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

impl SqsConfig {
    /// Consume the queue `queue`: its URL, or its name (looked up with `GetQueueUrl`).
    pub fn new(queue: impl Into<String>) -> Self {
        SqsConfig {
            queue: queue.into(),
            region: None,
            endpoint_url: None,
            receive_concurrency: 10,
            wait_time: Duration::from_secs(10),
            visibility_timeout: None,
            extend_visibility: true,
            attribute_names: Vec::new(),
            message_attribute_names: vec!["All".to_owned()],
            delete_interval: Duration::from_millis(100),
            on_final_failure: None,
            ordering: Ordering::Group,
            lag_interval: Duration::from_secs(15),
        }
    }

    fn unset() -> Self {
        SqsConfig::new("")
    }

    /// The region; unset, the SDK's chain (`AWS_REGION`, the profile) decides.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Another endpoint than AWS's (a local server); `AWS_ENDPOINT_URL_SQS` works too.
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// The most long polls in flight at once (each returns up to 10 messages). Default 10.
    pub fn receive_concurrency(mut self, polls: usize) -> Self {
        self.receive_concurrency = polls;
        self
    }

    /// How long one poll waits for messages, whole seconds up to 20. Default 10 s: a
    /// shutdown waits up to this long for the polls in flight, to release what they
    /// bring instead of leaving it invisible.
    pub fn wait_time(mut self, wait: Duration) -> Self {
        self.wait_time = wait;
        self
    }

    /// The visibility timeout given to received messages; unset, the queue's own.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// Whether a message still held near its visibility timeout gets it extended, so a
    /// long job is not delivered to another consumer meanwhile. Default on.
    pub fn extend_visibility(mut self, extend: bool) -> Self {
        self.extend_visibility = extend;
        self
    }

    /// System attributes to receive besides those the source reads itself
    /// (`ApproximateReceiveCount`, `MessageGroupId`, `SentTimestamp`).
    pub fn attribute_names(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.attribute_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Message attributes to receive. Default `["All"]`.
    pub fn message_attribute_names(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.message_attribute_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// How long an acknowledged message may wait for nine others to share its
    /// `DeleteMessageBatch`. Default 100 ms (a delete waits at most 1.5 times this).
    pub fn delete_interval(mut self, interval: Duration) -> Self {
        self.delete_interval = interval;
        self
    }

    /// What happens after a message's last attempt. Default: unset, which deletes a
    /// message the pipeline dead-lettered and redrives the others (see [`FinalFailure`]).
    pub fn on_final_failure(mut self, then: FinalFailure) -> Self {
        self.on_final_failure = Some(then);
        self
    }

    /// How messages are ordered. Default [`Ordering::Group`].
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.ordering = ordering;
        self
    }

    /// How often the queue's depth and oldest message's age are read. Default 15 s.
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.lag_interval = interval;
        self
    }

    /// The queue, as given: a URL or a name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Checks every setting; the error names the first bad one.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the field (`source.<field>`, as in the settings file) and what is wrong with it.
    pub fn validate(&self) -> Result<(), BuildError> {
        let field = |name: &str| format!("source.{name}");
        if self.queue.trim().is_empty() {
            return Err(BuildError::new(field("queue"), "must not be empty"));
        }
        if self.receive_concurrency == 0 {
            return Err(BuildError::at_least(field("receive_concurrency"), 1, 0));
        }
        let whole_seconds = |name: &str, value: Duration, max: Duration| {
            if value > max {
                return Err(BuildError::new(
                    field(name),
                    format!("must be at most {}, got {}", seconds(max), seconds(value)),
                ));
            }
            if value.subsec_nanos() != 0 {
                return Err(BuildError::new(field(name), "must be whole seconds"));
            }
            Ok(())
        };
        whole_seconds("wait_time", self.wait_time, MAX_WAIT)?;
        if let Some(visibility) = self.visibility_timeout {
            whole_seconds("visibility_timeout", visibility, MAX_VISIBILITY)?;
            if visibility < Duration::from_secs(2) {
                return Err(BuildError::new(
                    field("visibility_timeout"),
                    "must be at least 2s",
                ));
            }
        }
        for (name, value) in [
            ("delete_interval", self.delete_interval),
            ("lag_interval", self.lag_interval),
        ] {
            if value < Duration::from_millis(1) {
                return Err(BuildError::new(
                    field(name),
                    format!("must be at least 1ms, got {value:?}"),
                ));
            }
        }
        Ok(())
    }
}

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

/// Whole seconds for SQS's `i32` fields, rounded up and capped at SQS's 12 hours.
pub(crate) fn sqs_seconds(duration: Duration) -> i32 {
    let capped = duration.min(MAX_VISIBILITY);
    let rounded = capped.as_secs() + u64::from(capped.subsec_nanos() > 0);
    i32::try_from(rounded).unwrap_or(i32::MAX)
}

/// Checked when a service's settings file is loaded: every field, named `source.<field>`.
impl longshore::source::SourceSettings for SqsConfig {
    fn validate(&self) -> Result<(), BuildError> {
        SqsConfig::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_file_with_a_bad_source_setting_fails_to_load_naming_it_as_in_the_file() {
        let no_env: [(&str, &str); 0] = [];
        let error = longshore::service::ServiceConfig::<SqsConfig>::from_toml(
            "[source]\nqueue = \"orders\"\nwait_time = \"30s\"",
            no_env,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid source.wait_time: must be at most 20s, got 30s"
        );
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases = [
            (SqsConfig::new(" "), "source.queue"),
            (
                SqsConfig::new("q").receive_concurrency(0),
                "source.receive_concurrency",
            ),
            (
                SqsConfig::new("q").wait_time(Duration::from_millis(1500)),
                "source.wait_time",
            ),
            (
                SqsConfig::new("q").visibility_timeout(Duration::from_secs(13 * 3600)),
                "source.visibility_timeout",
            ),
            (
                SqsConfig::new("q").visibility_timeout(Duration::from_secs(1)),
                "source.visibility_timeout",
            ),
            (
                SqsConfig::new("q").delete_interval(Duration::ZERO),
                "source.delete_interval",
            ),
            (
                SqsConfig::new("q").lag_interval(Duration::ZERO),
                "source.lag_interval",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(config.validate().unwrap_err().field, field, "{config:?}");
        }
    }

    #[test]
    fn seconds_round_up_and_cap() {
        assert_eq!(sqs_seconds(Duration::ZERO), 0);
        assert_eq!(sqs_seconds(Duration::from_millis(1)), 1);
        assert_eq!(sqs_seconds(Duration::from_secs(3)), 3);
        assert_eq!(sqs_seconds(Duration::from_secs(100_000)), 43_200);
    }
}
