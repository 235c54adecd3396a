//! The queue table source's settings.

use std::time::Duration;

use longshore::source::SourceSettings;
use longshore::BuildError;

/// Settings of a [`PgQueueSource`](crate::PgQueueSource), as a service's `[source]`
/// section gives them.
///
/// ```
/// use std::time::Duration;
/// use longshore_postgres::PgQueueConfig;
///
/// let config = PgQueueConfig::new("host=db user=app dbname=shop").queue("invoices");
/// assert_eq!(config.table, "longshore_queue");
///
/// let config: PgQueueConfig = toml::from_str(r#"
///     url = "host=db user=app dbname=shop"
///     queue = "invoices"
///     lease = "2m"
/// "#).unwrap();
/// assert_eq!(config.lease, Duration::from_secs(120));
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PgQueueConfig {
    /// A libpq connection string (`host=... user=... dbname=...`) or URL
    /// (`postgresql://user@host/db`).
    pub url: String,
    /// The queue table (default `longshore_queue`; see [`migration`](crate::migration)): a
    /// plain lower-case name, since it is written into the SQL.
    #[serde(default = "default_table")]
    pub table: String,
    /// Which queue of the table to consume: its rows' `queue` column (default `default`).
    #[serde(default = "default_queue")]
    pub queue: String,
    /// How long a row leased to this consumer stays invisible to others (default 30 s);
    /// the source extends it while the row is handled, so a killed consumer's rows come
    /// back this long after its last extension.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// How often to look for rows when no notification came (default 5 s): a fallback,
    /// since inserts wake the source through `LISTEN`/`NOTIFY`, and a row becoming
    /// visible later (a retry's backoff ending) is looked for when it does.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often the queue's depth and oldest age are read for the metrics (default
    /// 15 s).
    #[serde(default = "default_lag_interval", with = "humantime_serde")]
    pub lag_interval: Duration,
}

fn default_table() -> String {
    "longshore_queue".to_owned()
}

fn default_queue() -> String {
    "default".to_owned()
}

fn default_lease() -> Duration {
    Duration::from_secs(30)
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_lag_interval() -> Duration {
    Duration::from_secs(15)
}

impl PgQueueConfig {
    /// Consumes the `default` queue of `longshore_queue` at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PgQueueConfig {
            url: url.into(),
            table: default_table(),
            queue: default_queue(),
            lease: default_lease(),
            poll_interval: default_poll_interval(),
            lag_interval: default_lag_interval(),
        }
    }

    /// Sets [`PgQueueConfig::table`].
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Sets [`PgQueueConfig::queue`].
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Sets [`PgQueueConfig::lease`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets [`PgQueueConfig::poll_interval`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets [`PgQueueConfig::lag_interval`].
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.lag_interval = interval;
        self
    }
}

/// No database: a settings file must name one (`source.url`), or the start is refused.
impl Default for PgQueueConfig {
    fn default() -> Self {
        PgQueueConfig::new("")
    }
}

/// Whether `name` is a table name this crate writes into SQL as it is.
pub(crate) fn check_table(field: &str, name: &str) -> Result<(), BuildError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !first_ok
        || name.len() > 50
        || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(BuildError::new(
            field,
            format!(
                "{name:?} must be a plain table name: a-z, 0-9 and _, not starting with a digit, at most 50"
            ),
        ));
    }
    Ok(())
}

impl SourceSettings for PgQueueConfig {
    fn validate(&self) -> Result<(), BuildError> {
        BuildError::require_set([
            ("source.url", self.url.trim()),
            ("source.queue", self.queue.as_str()),
        ])?;
        check_table("source.table", &self.table)?;
        BuildError::require_durations([
            ("source.lease", self.lease, Duration::from_secs(1)),
            (
                "source.poll_interval",
                self.poll_interval,
                Duration::from_millis(10),
            ),
            (
                "source.lag_interval",
                self.lag_interval,
                Duration::from_millis(100),
            ),
        ])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_name_must_be_plain_and_every_field_is_named() {
        assert!(check_table("t", "orders_queue2").is_ok());
        for bad in [
            "",
            "1q",
            "Orders",
            "q; drop table x",
            "a.b",
            "q\"",
            &"x".repeat(51),
        ] {
            assert!(check_table("t", bad).is_err(), "{bad}");
        }
        let error = PgQueueConfig::new("host=x")
            .lease(Duration::from_millis(10))
            .validate()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid source.lease: must be at least 1s, got 10ms"
        );
        let error = PgQueueConfig::default().validate().unwrap_err();
        assert_eq!(error.to_string(), "invalid source.url: must not be empty");
    }
}
