//! Errors of the file connector.

use std::path::{Path, PathBuf};

/// The file source could not start, or can no longer read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileSourceError {
    /// A setting is invalid; the error names it.
    #[error(transparent)]
    Config(#[from] longshore::BuildError),
    /// A file could not be opened, read or written.
    #[error("{doing} {path}: {source}")]
    Io {
        /// What the source was doing.
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint does not fit the file: it is not a checkpoint, or the file was
    /// replaced or cut short since it was written.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// A followed file can no longer be read where the checkpoint says: it was cut short,
    /// or its name is now another file's.
    #[error("following {path}: {reason}")]
    Followed {
        /// The file.
        path: PathBuf,
        /// What happened to it.
        reason: String,
    },
    /// The file changed under the reader: cut short, or rewritten in place (the bytes
    /// before where reading has got to are no longer those read).
    #[error("reading {path}: {reason}")]
    Changed {
        /// The file.
        path: PathBuf,
        /// What changed.
        reason: String,
    },
    /// The CSV header does not parse (not UTF-8, say): no record could be read by it.
    #[error("{path}: the CSV header at line 1 does not parse: {reason}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What the csv crate said.
        reason: String,
    },
    /// A record is longer than `max_record_bytes`: it is neither cut nor skipped.
    #[error("{path}: the record at line {line} (byte {offset}) is longer than source.max_record_bytes ({max} bytes)")]
    RecordTooLong {
        /// The file.
        path: PathBuf,
        /// The line it starts on.
        line: u64,
        /// The byte it starts at.
        offset: u64,
        /// The limit.
        max: usize,
    },
}

impl FileSourceError {
    pub(crate) fn io(doing: &'static str, path: &Path, source: std::io::Error) -> Self {
        FileSourceError::Io {
            doing,
            path: path.to_owned(),
            source,
        }
    }
}
