//! The file source's settings: what file, in what format, where its checkpoint lives.

use std::path::{Path, PathBuf};
use std::time::Duration;

use longshore::source::SourceSettings;
use longshore::BuildError;

/// How the file's records are laid out.
///
/// ```
/// use longshore_file::{FileConfig, Format};
///
/// let config: FileConfig = toml::from_str("path = \"orders.csv\"\nformat = \"csv\"").unwrap();
/// assert_eq!(config.format, Format::Csv);
/// assert_eq!(FileConfig::new("events.ndjson").format, Format::Lines);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Format {
    /// One record a line (newline-delimited JSON, logs, plain text). A line's `\r\n` or
    /// `\n` is not part of the record; empty lines are skipped.
    #[default]
    Lines,
    /// RFC 4180 CSV: a record ends at a newline outside double quotes, so a quoted field
    /// may hold newlines. With [`FileConfig::headers`], the first record names the
    /// columns and is not delivered; [`Csv`](crate::Csv) decodes records by those names.
    Csv,
}

/// Settings of a [`FileSource`](crate::FileSource), as a service's `[source]` section
/// gives them.
///
/// ```
/// use std::time::Duration;
/// use longshore_file::{FileConfig, Format};
///
/// let config = FileConfig::new("orders.csv").format(Format::Csv).follow(true);
/// assert_eq!(config.checkpoint_path(), std::path::Path::new("orders.csv.checkpoint"));
///
/// let config: FileConfig = toml::from_str(r#"
///     path = "/data/events.ndjson"
///     follow = true
///     poll_interval = "500ms"
/// "#).unwrap();
/// assert_eq!(config.poll_interval, Duration::from_millis(500));
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FileConfig {
    /// The file to read.
    pub path: PathBuf,
    /// How its records are laid out (default `lines`).
    #[serde(default)]
    pub format: Format,
    /// CSV: whether the first record names the columns (default `true`).
    #[serde(default = "yes")]
    pub headers: bool,
    /// Where the acknowledged position is kept (default: the file's path with
    /// `.checkpoint` added). A restart resumes after the last record acknowledged with
    /// every record before it; delete it to read the file again from its start.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// Keep reading as lines are appended, like `tail -f` (default `false`: the source
    /// is exhausted at the end of the file and the pipeline stops once all is done). A
    /// last line without its newline is delivered at the end of a file not followed, and
    /// waited for when followed.
    #[serde(default)]
    pub follow: bool,
    /// Followed: how often to look for appended data at the end of the file (default
    /// 200 ms).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The longest record, in bytes (default 1 MiB). A longer one stops the pipeline
    /// with an error naming its line, rather than being cut or skipped.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// The most records read past the checkpoint written (default 4096, at least the
    /// pipeline's in-flight bound): what a kill can make the next run handle twice.
    #[serde(default = "default_max_unrecorded")]
    pub max_unrecorded: usize,
}

fn yes() -> bool {
    true
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(200)
}

fn default_max_record_bytes() -> usize {
    1024 * 1024
}

fn default_max_unrecorded() -> usize {
    4096
}

impl FileConfig {
    /// Reads `path` as lines, from its checkpoint, to its end.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileConfig {
            path: path.into(),
            format: Format::default(),
            headers: true,
            checkpoint: None,
            follow: false,
            poll_interval: default_poll_interval(),
            max_record_bytes: default_max_record_bytes(),
            max_unrecorded: default_max_unrecorded(),
        }
    }

    /// Sets [`FileConfig::format`].
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Sets [`FileConfig::headers`].
    pub fn headers(mut self, headers: bool) -> Self {
        self.headers = headers;
        self
    }

    /// Sets [`FileConfig::checkpoint`].
    pub fn checkpoint(mut self, path: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some(path.into());
        self
    }

    /// Sets [`FileConfig::follow`].
    pub fn follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    /// Sets [`FileConfig::poll_interval`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets [`FileConfig::max_record_bytes`].
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// Sets [`FileConfig::max_unrecorded`].
    pub fn max_unrecorded(mut self, records: usize) -> Self {
        self.max_unrecorded = records;
        self
    }

    /// Where the checkpoint is kept: [`FileConfig::checkpoint`], or the file's path with
    /// `.checkpoint` added.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.checkpoint.clone().unwrap_or_else(|| {
            let mut path = self.path.clone().into_os_string();
            path.push(".checkpoint");
            PathBuf::from(path)
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// No file: a settings file must name one (`source.path`), or the start is refused.
impl Default for FileConfig {
    fn default() -> Self {
        FileConfig::new("")
    }
}

impl SourceSettings for FileConfig {
    fn validate(&self) -> Result<(), BuildError> {
        if self.path.as_os_str().is_empty() {
            return Err(BuildError::new("source.path", "must name a file"));
        }
        if self.checkpoint_path() == self.path {
            return Err(BuildError::new(
                "source.checkpoint",
                "must not be the file it records",
            ));
        }
        if self.poll_interval < Duration::from_millis(1) {
            return Err(BuildError::new("source.poll_interval", "must be at least 1ms"));
        }
        if self.max_record_bytes < 2 {
            return Err(BuildError::at_least(
                "source.max_record_bytes",
                2,
                self.max_record_bytes,
            ));
        }
        if self.max_unrecorded == 0 {
            return Err(BuildError::at_least("source.max_unrecorded", 1, 0));
        }
        Ok(())
    }
}
