//! The file source and its acknowledger: records read on demand, the acknowledged prefix
//! recorded in the checkpoint by a task of its own.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use longshore::source::{Acknowledger, Plan, Source, SourceSettings};
use longshore::{BoxError, BuildError, Message};
use tokio::sync::{watch, Notify};

use crate::checkpoint::{self, Lock};
use crate::config::{FileConfig, Format};
use crate::error::FileSourceError;
use crate::metadata::{FileMessage, FileMetadata};
use crate::metrics::FileMetrics;
use crate::progress::{Position, Progress};
use crate::reader::{Next, Reader, Record};

/// Reads a newline-delimited or CSV file on demand, and resumes after the last record
/// acknowledged with every record before it.
///
/// Each record is a message whose data is its bytes (without the line ending); its
/// [`FileMetadata`] tells its line and byte offset. The checkpoint file records the
/// position before which every record is acknowledged, as Kafka commits an offset: a
/// task writes it whenever that position moves (whole, to a temporary file renamed over
/// the old one), and once more, synced to disk, when the pipeline finishes.
///
/// **Duplicates.** A kill at any moment loses nothing; the next run handles again at most
/// the records read past the checkpoint then, which the source bounds by
/// [`max_unrecorded`](FileConfig::max_unrecorded): it reads no further until the
/// checkpoint catches up. **Order.** Records are read in file order; handled in it with
/// one processor, or per key with `partition_by`.
///
/// ```no_run
/// use longshore::{BoxError, Handler, Pipeline, Processors};
/// use longshore_file::{Csv, FileConfig, FileMessage, FileMetadata, FileSource, Format};
///
/// #[derive(serde::Deserialize)]
/// struct Row { id: u64, amount_cents: i64 }
///
/// struct Import;
/// impl Handler for Import {
///     type Item = Row;
///     type Metadata = FileMetadata;
///     async fn handle_message(&self, message: &mut FileMessage<Row>) -> Result<(), BoxError> {
///         println!("line {}: {} cents", message.metadata().line(), message.data().amount_cents);
///         Ok(())
///     }
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), BoxError> {
/// let source = FileSource::open(FileConfig::new("payments.csv").format(Format::Csv)).await?;
/// let pipeline = Pipeline::builder(source, Import)
///     .decode(Csv::new())
///     .processors(Processors::new(4))
///     .start()?;
/// pipeline.wait().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FileSource {
    shared: Arc<Shared>,
    reading: tokio::sync::Mutex<Reading>,
    poll_interval: Duration,
}

#[derive(Debug)]
struct Reading {
    reader: Reader,
    /// CSV with headers, read from the start: the first record is the header.
    header_pending: bool,
    headers: Option<Arc<csv::StringRecord>>,
}

/// What the source and its acknowledger share.
#[derive(Debug)]
struct Shared {
    path: Arc<Path>,
    /// The open file being read, whose bytes the checkpoint fingerprints.
    input: Arc<std::fs::File>,
    checkpoint: PathBuf,
    progress: Mutex<Recorded>,
    /// Woken when a checkpoint is written: room to read more.
    room: Notify,
    /// Told when the acknowledged position moves; the writer task listens.
    moved: watch::Sender<()>,
    /// Held while a checkpoint is written: one write at a time, the newest last.
    writing: tokio::sync::Mutex<Position>,
    max_unrecorded: u64,
    metrics: FileMetrics,
    /// Why the source can read no more: a record too long, a checkpoint not written.
    fatal: Mutex<Option<String>>,
    /// Held while the source lives: no other source reads with this checkpoint.
    _lock: Lock,
}

#[derive(Debug)]
struct Recorded {
    progress: Progress,
    /// Records handed out before the position of the last checkpoint written.
    written: u64,
}

impl FileSource {
    /// Opens the file at its checkpoint (its start when there is none) and starts the
    /// task that writes the checkpoint, on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`FileSourceError`]: an invalid setting (naming it), a file that cannot be
    /// opened, a checkpoint that does not fit the file (past its end, or not at a line's
    /// start: the file was replaced or cut short).
    pub async fn open(config: FileConfig) -> Result<Self, FileSourceError> {
        config.validate()?;
        let checkpoint_path = config.checkpoint_path();
        refuse_same_file(config.path(), &checkpoint_path)?;
        let at = checkpoint_path.clone();
        let (lock, from) = tokio::task::spawn_blocking(move || {
            let lock = Lock::take(&at)?;
            checkpoint::remove_leftovers(&at);
            Ok::<_, FileSourceError>((lock, checkpoint::read(&at)?))
        })
        .await
        .map_err(|panicked| {
            FileSourceError::io(
                "reading the checkpoint",
                &checkpoint_path,
                std::io::Error::other(panicked.to_string()),
            )
        })??;
        let open = |at: checkpoint::Recorded, follow: bool| {
            Reader::open(
                config.path(),
                at,
                config.format,
                follow,
                config.max_record_bytes,
                &checkpoint_path,
            )
        };
        let reader = open(from, config.follow).await?;
        let with_headers = config.format == Format::Csv && config.headers;
        // Resumed past the header: read it from the file's start.
        let headers = if with_headers && from.position.offset > 0 {
            let start = checkpoint::Recorded {
                position: Position { offset: 0, line: 1 },
                fingerprint: None,
            };
            let mut start = open(start, false).await?;
            match first_record(&mut start, config.poll_interval).await? {
                Some(record) => Some(Arc::new(header_of(config.path(), &record)?)),
                None => None,
            }
        } else {
            None
        };
        let (moved, changes) = watch::channel(());
        let from = from.position;
        let shared = Arc::new(Shared {
            path: Arc::from(config.path()),
            input: reader.input(),
            checkpoint: checkpoint_path,
            progress: Mutex::new(Recorded {
                progress: Progress::new(from),
                written: 0,
            }),
            room: Notify::new(),
            moved,
            writing: tokio::sync::Mutex::new(from),
            max_unrecorded: config.max_unrecorded as u64,
            metrics: FileMetrics::new(&config.path().display().to_string()),
            fatal: Mutex::new(None),
            _lock: lock,
        });
        // Written once now: a checkpoint that cannot be written stops the start, not the
        // first acknowledgement.
        shared.write(true).await;
        if let Some(error) = lock_fatal(&shared).take() {
            return Err(FileSourceError::Checkpoint {
                path: shared.checkpoint.clone(),
                reason: error,
            });
        }
        if let Some(length) = reader.length().await {
            shared
                .metrics
                .lag_bytes
                .set(gauge(length.saturating_sub(from.offset)));
        }
        tokio::spawn(write_checkpoints(Arc::downgrade(&shared), changes));
        Ok(FileSource {
            shared,
            reading: tokio::sync::Mutex::new(Reading {
                reader,
                header_pending: with_headers && from.offset == 0,
                headers,
            }),
            poll_interval: config.poll_interval,
        })
    }

    /// Records handed to the pipeline and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        lock(&self.shared.progress).progress.outstanding()
    }

    /// The checkpoint file's path.
    pub fn checkpoint_path(&self) -> &Path {
        &self.shared.checkpoint
    }

    /// Records as many as `want` of what was read, numbering each; none without waiting.
    fn take(&self, reading: &mut Reading, want: usize) -> Result<(Vec<FileMessage>, bool), FileSourceError> {
        let mut records: Vec<Record> = Vec::new();
        let mut ended = false;
        while records.len() < want {
            match reading.reader.next() {
                Ok(Next::Record(record)) if reading.header_pending => {
                    let header = header_of(&self.shared.path, &record).inspect_err(|error| {
                        *lock(&self.shared.fatal) = Some(error.to_string());
                    })?;
                    reading.header_pending = false;
                    reading.headers = Some(Arc::new(header));
                    lock(&self.shared.progress).progress.skip_to(record.end);
                }
                Ok(Next::Record(record)) => records.push(record),
                Ok(Next::More) => break,
                Ok(Next::End) => {
                    ended = true;
                    break;
                }
                // The records before it go out first: the reader stays at the bad one,
                // and the next call meets the error again with nothing taken.
                Err(error) if records.is_empty() => {
                    *lock(&self.shared.fatal) = Some(error.to_string());
                    return Err(error);
                }
                Err(_) => break,
            }
        }
        // Numbered with no await since the records were taken: a dropped receive loses
        // none of them.
        let mut recorded = lock(&self.shared.progress);
        let messages = records
            .into_iter()
            .map(|record| {
                let seq = recorded.progress.handed(record.end);
                let metadata = FileMetadata::read(
                    self.shared.path.clone(),
                    record.start.line,
                    record.start.offset,
                    reading.headers.clone(),
                    record.bytes.clone(),
                    seq,
                );
                Message::with_metadata(record.bytes, metadata)
            })
            .collect();
        Ok((messages, ended))
    }

    /// How many more records may be read before the checkpoint catches up.
    fn room(&self) -> u64 {
        let recorded = lock(&self.shared.progress);
        let unrecorded = recorded.progress.handed_count() - recorded.written;
        self.shared.max_unrecorded.saturating_sub(unrecorded)
    }
}

/// The first record from `reader`, or `None` when the file has none.
async fn first_record(reader: &mut Reader, poll: Duration) -> Result<Option<Record>, FileSourceError> {
    loop {
        match reader.next()? {
            Next::Record(record) => return Ok(Some(record)),
            Next::End => return Ok(None),
            Next::More => reader.read_more(poll).await?,
        }
    }
}

/// A CSV header record's column names; one that does not parse (not UTF-8, say) would
/// fail every record read by it, so it stops the source.
fn header_of(path: &Path, record: &Record) -> Result<csv::StringRecord, FileSourceError> {
    let refused = |reason: String| FileSourceError::Header {
        path: path.to_owned(),
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(&record.bytes[..]);
    let mut header = csv::StringRecord::new();
    match reader.read_record(&mut header) {
        Ok(true) => Ok(header),
        Ok(false) => Err(refused("it is empty".to_owned())),
        Err(error) => Err(refused(error.to_string())),
    }
}

/// Refuses a checkpoint that is the file it records, however the two are spelled.
fn refuse_same_file(input: &Path, checkpoint: &Path) -> Result<(), FileSourceError> {
    let canonical = |path: &Path| -> Option<PathBuf> {
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(std::fs::canonicalize(folder).ok()?.join(path.file_name()?))
    };
    match (canonical(input), canonical(checkpoint)) {
        (Some(input), Some(checkpoint)) if input == checkpoint => {
            Err(BuildError::new("source.checkpoint", "must not be the file it records").into())
        }
        _ => Ok(()),
    }
}

/// A gauge's value, saturating.
fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn lock_fatal(shared: &Shared) -> std::sync::MutexGuard<'_, Option<String>> {
    lock(&shared.fatal)
}

impl Source for FileSource {
    type Data = Bytes;
    type Metadata = FileMetadata;
    type Acknowledger = FileAcknowledger;

    fn acknowledger(&self) -> FileAcknowledger {
        FileAcknowledger(self.shared.clone())
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<FileMessage>>, BoxError> {
        let mut reading = self.reading.lock().await;
        loop {
            // Once it cannot go on (a record too long, a bad header), it never reads past.
            if let Some(error) = lock(&self.shared.fatal).clone() {
                return Err(error.into());
            }
            let room = self.shared.room.notified();
            let want = self.room().min(demand.get() as u64) as usize;
            if want == 0 {
                // The checkpoint is behind by max_unrecorded: wait for it to be written.
                room.await;
                continue;
            }
            let (messages, ended) = self.take(&mut reading, want)?;
            if !messages.is_empty() {
                return Ok(Some(messages));
            }
            if ended {
                return Ok(None);
            }
            if let Err(error) = reading.reader.read_more(self.poll_interval).await {
                *lock(&self.shared.fatal) = Some(error.to_string());
                return Err(error.into());
            }
            if reading.reader.at_end() {
                // Followed and caught up: what waits is what is not yet acknowledged.
                let recorded = lock(&self.shared.progress).progress.done_to().offset;
                self.shared
                    .metrics
                    .lag_bytes
                    .set(gauge(reading.reader.read_to().saturating_sub(recorded)));
            }
        }
    }

    fn prepare(&self, plan: &Plan) -> Result<(), BuildError> {
        if !plan.dead_letter {
            tracing::warn!(path = %self.shared.path.display(), "no dead-letter destination: a record failed for good is logged (with its file and line) and passed, like a Kafka record; set one to keep it");
        }
        if (plan.max_in_flight as u64) > self.shared.max_unrecorded {
            return Err(BuildError::new(
                "source.max_unrecorded",
                format!(
                    "must be at least the pipeline's in-flight bound ({}), got {}: raise it, or \
                     lower the pipeline's max_in_flight (by default processors × (2 × max_demand \
                     − min_demand) plus the batchers' share)",
                    plan.max_in_flight, self.shared.max_unrecorded
                ),
            ));
        }
        Ok(())
    }

    fn liveness(&self) -> Result<(), BoxError> {
        match &*lock(&self.shared.fatal) {
            Some(error) => Err(error.clone().into()),
            None => Ok(()),
        }
    }
}

/// Acknowledges a [`FileSource`]'s records: the checkpoint moves past every record before
/// the first one not yet acknowledged. Made by the source.
#[derive(Debug, Clone)]
pub struct FileAcknowledger(Arc<Shared>);

impl Acknowledger<FileMetadata> for FileAcknowledger {
    async fn ack<T: Send + 'static>(&self, successful: Vec<FileMessage<T>>, failed: Vec<FileMessage<T>>) {
        let moved = {
            let mut recorded = lock(&self.0.progress);
            let before = recorded.progress.done_count();
            for message in successful.iter().chain(&failed) {
                if !recorded.progress.acknowledged(message.metadata().seq) {
                    tracing::error!(path = %self.0.path.display(), line = message.metadata().line(), "a record acknowledged twice, or never read");
                }
            }
            recorded.progress.done_count() != before
        };
        if moved {
            self.0.moved.send_replace(());
        }
    }

    /// The last checkpoint, synced to disk.
    async fn flush(&self) {
        self.0.write(true).await;
    }

    fn origin<T>(&self, message: &FileMessage<T>) -> Option<String> {
        let metadata = message.metadata();
        Some(format!("{}:{}", metadata.path().display(), metadata.line()))
    }
}

impl Shared {
    /// Writes the checkpoint if the acknowledged position moved since the last write
    /// (always, with `sync`, then synced to disk).
    async fn write(&self, sync: bool) {
        let mut last = self.writing.lock().await;
        let (count, position) = {
            let recorded = lock(&self.progress);
            (recorded.progress.done_count(), recorded.progress.done_to())
        };
        if position == *last && !sync {
            return;
        }
        let (checkpoint, input) = (self.checkpoint.clone(), self.input.clone());
        let written = tokio::task::spawn_blocking(move || {
            checkpoint::write(&checkpoint, &input, position, sync)?;
            Ok(input.metadata().map(|m| m.len()).ok())
        })
        .await
        .unwrap_or_else(|panicked| Err(std::io::Error::other(panicked.to_string())));
        match written {
            Ok(length) => {
                *last = position;
                lock(&self.progress).written = count;
                self.room.notify_waiters();
                self.metrics.checkpoint_line.set(gauge(position.line));
                if let Some(length) = length {
                    self.metrics
                        .lag_bytes
                        .set(gauge(length.saturating_sub(position.offset)));
                }
            }
            Err(error) => {
                // Nothing is lost (the records after the last checkpoint come again), but
                // reading stops at max_unrecorded: say so, and fail the pipeline.
                let error = FileSourceError::io("writing the checkpoint", &self.checkpoint, error);
                tracing::error!(%error, "file checkpoint not written");
                *lock(&self.fatal) = Some(error.to_string());
            }
        }
    }
}

/// Writes the checkpoint each time the acknowledged position moves, until the source and
/// its acknowledger are gone; writes that pile up while one runs make one write.
async fn write_checkpoints(shared: Weak<Shared>, mut moved: watch::Receiver<()>) {
    while moved.changed().await.is_ok() {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.write(false).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
