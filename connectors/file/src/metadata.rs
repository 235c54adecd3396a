//! What a file record carries beside its data: where it is in the file, the CSV header,
//! and the original bytes (for a dead-letter destination, after a decode step).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use longshore::trace::Attribute;
use longshore::Message;

/// A record of a [`FileSource`](crate::FileSource): its data is the record's bytes, or
/// what the pipeline's decode step makes of them.
pub type FileMessage<T = Bytes> = Message<T, FileMetadata>;

/// Where a record came from.
///
/// ```
/// use longshore_file::FileMetadata;
///
/// // A handler's unit test builds records as the source would.
/// let message = FileMetadata::new("orders.csv", 12, 345, "7,pears").into_message();
/// assert_eq!(message.metadata().line(), 12);
/// assert_eq!(message.metadata().offset(), 345);
/// assert_eq!(&message.data()[..], b"7,pears");
/// ```
#[derive(Debug, Clone)]
pub struct FileMetadata {
    path: Arc<Path>,
    line: u64,
    offset: u64,
    headers: Option<Arc<csv::StringRecord>>,
    raw: Bytes,
    /// The record's number in this source's reading, for its acknowledgement.
    pub(crate) seq: u64,
}

/// A line's or record's span (feature `otel` of `longshore`): a file has no headers, so
/// the span starts a trace of its own.
impl longshore::trace::TraceMetadata for FileMetadata {
    fn messaging_system(&self) -> &'static str {
        "file"
    }

    fn destination(&self) -> &str {
        self.path.to_str().unwrap_or("(a path that is not UTF-8)")
    }

    fn trace_header(&self, _: &str) -> Option<&str> {
        None
    }

    fn attributes(&self, record: &mut dyn FnMut(&'static str, Attribute<'_>)) {
        record(
            "longshore.file.line",
            Attribute::Int(i64::try_from(self.line).unwrap_or(i64::MAX)),
        );
    }
}

impl FileMetadata {
    /// A record of `path` starting at `line` (1-based) and byte `offset`, holding `raw`.
    pub fn new(path: impl AsRef<Path>, line: u64, offset: u64, raw: impl Into<Bytes>) -> Self {
        FileMetadata {
            path: Arc::from(path.as_ref()),
            line,
            offset,
            headers: None,
            raw: raw.into(),
            seq: 0,
        }
    }

    pub(crate) fn read(
        path: Arc<Path>,
        line: u64,
        offset: u64,
        headers: Option<Arc<csv::StringRecord>>,
        raw: Bytes,
        seq: u64,
    ) -> Self {
        FileMetadata {
            path,
            line,
            offset,
            headers,
            raw,
            seq,
        }
    }

    /// With the CSV header (the file's first record) the record is read by.
    pub fn with_headers<I, S>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.headers = Some(Arc::new(csv::StringRecord::from_iter(headers)));
        self
    }

    /// A message of this record, its data the raw bytes.
    pub fn into_message(self) -> FileMessage {
        let raw = self.raw.clone();
        Message::with_metadata(raw, self)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The line the record starts on, counted from 1.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The byte of the file the record starts at.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// CSV with headers: the column names.
    pub fn headers(&self) -> Option<&csv::StringRecord> {
        self.headers.as_deref()
    }

    /// The record as read, without its line ending.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}
