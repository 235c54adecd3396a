//! Reading records from the file, a block at a time, without copying them: each record is
//! a slice of the block it was read in.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::checkpoint;
use crate::config::Format;
use crate::error::FileSourceError;
use crate::progress::Position;

/// How much is read from the file at once.
const BLOCK: usize = 256 * 1024;

/// Finds where records end in a buffer, remembering how far it looked: a newline for
/// lines; for CSV, the record's end as the csv crate reads it (quotes opening a field,
/// `\r`, `\n` or `\r\n` ending a record), so that splitting and decoding agree.
#[derive(Debug)]
pub(crate) struct Splitter {
    format: Format,
    scanned: usize,
    csv: csv_core::Reader,
}

/// Where csv-core writes the fields it parses: only their ends are wanted, so what does
/// not fit is dropped and parsing goes on.
const SCRATCH: usize = 4096;

impl Splitter {
    pub(crate) fn new(format: Format) -> Self {
        Splitter {
            format,
            scanned: 0,
            csv: csv_core::Reader::new(),
        }
    }

    /// The length of the first record of `buffer`, its line ending included, if it is
    /// complete. `buffer` only grows between calls, until [`Splitter::taken`].
    pub(crate) fn end(&mut self, buffer: &[u8]) -> Option<usize> {
        match self.format {
            Format::Lines => match memchr::memchr(b'\n', &buffer[self.scanned..]) {
                Some(at) => Some(self.scanned + at + 1),
                None => {
                    self.scanned = buffer.len();
                    None
                }
            },
            Format::Csv => {
                let mut output = [0u8; SCRATCH];
                let mut ends = [0usize; 64];
                loop {
                    let input = &buffer[self.scanned..];
                    if input.is_empty() {
                        return None;
                    }
                    let (result, read, _, _) = self.csv.read_record(input, &mut output, &mut ends);
                    self.scanned += read;
                    match result {
                        csv_core::ReadRecordResult::Record => return Some(self.scanned),
                        csv_core::ReadRecordResult::InputEmpty | csv_core::ReadRecordResult::End => {
                            return None
                        }
                        csv_core::ReadRecordResult::OutputFull
                        | csv_core::ReadRecordResult::OutputEndsFull => {}
                    }
                }
            }
        }
    }

    /// The first record was taken off the buffer: look from its start.
    pub(crate) fn taken(&mut self) {
        self.scanned = 0;
    }

    /// Looks at the buffer afresh, as if nothing had been scanned.
    pub(crate) fn restart(&mut self) {
        self.scanned = 0;
        self.csv = csv_core::Reader::new();
    }
}

/// One record, as read: its bytes (without the line ending), where it starts, and the
/// position after it.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) bytes: Bytes,
    pub(crate) start: Position,
    pub(crate) end: Position,
}

/// What the reader has now.
#[derive(Debug)]
pub(crate) enum Next {
    Record(Record),
    /// Nothing complete in what was read: read more.
    More,
    /// The end of a file not followed: nothing more will come.
    End,
}

/// The file, read from a position on.
#[derive(Debug)]
pub(crate) struct Reader {
    path: PathBuf,
    file: tokio::fs::File,
    /// The same open file, for the checkpoint's fingerprint: read at positions, never
    /// moving `file`'s.
    input: Arc<std::fs::File>,
    buffer: BytesMut,
    splitter: Splitter,
    /// The position of `buffer[0]`.
    at: Position,
    /// The file had nothing more at the last read.
    at_end: bool,
    /// The last record taken ended in `\r`: a `\n` first in the next is its ending.
    after_cr: bool,
    /// The fingerprint of the bytes just before `read_to`, as read: compared with the
    /// file's before each read, so that a file rewritten in place (or cut short and grown
    /// again) under the reader is noticed, not read on from the middle of other data.
    read_tail: Option<u64>,
    follow: bool,
    max_record_bytes: usize,
}

impl Reader {
    /// Opens `path` at `from`, refusing a position that does not fit the file (past its
    /// end, not just after a line's end, or after bytes other than those the checkpoint
    /// recorded: the file was replaced or cut short).
    pub(crate) async fn open(
        path: &Path,
        from: checkpoint::Recorded,
        format: Format,
        follow: bool,
        max_record_bytes: usize,
        checkpoint: &Path,
    ) -> Result<Self, FileSourceError> {
        let opened = |error| FileSourceError::io("opening", path, error);
        let file = std::fs::File::open(path).map_err(opened)?;
        let misfit = |reason: String| {
            FileSourceError::Checkpoint {
            path: checkpoint.to_owned(),
            reason: format!("{reason}; the file was replaced or cut short since (delete the checkpoint to read it again from the start)"),
        }
        };
        let (mut file, length) = tokio::task::spawn_blocking(move || {
            let length = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, length))
        })
        .await
        .map_err(|panicked| opened(std::io::Error::other(panicked.to_string())))?
        .map_err(opened)?;
        let offset = from.position.offset;
        if offset > length {
            return Err(misfit(format!(
                "records byte {offset} of {}, which has {length}",
                path.display()
            )));
        }
        // A checkpoint between a `\r` and its `\n` (a CSV record ends at the `\r`): that
        // `\n` ends no other line.
        let mut after_cr = false;
        let mut read_tail = None;
        if offset > 0 {
            let (before, fingerprint, returned) = tokio::task::spawn_blocking(move || {
                let mut byte = [0u8];
                file.seek(SeekFrom::Start(offset - 1))?;
                std::io::Read::read_exact(&mut file, &mut byte)?;
                let fingerprint = checkpoint::fingerprint(&file, offset)?;
                Ok::<_, std::io::Error>((byte[0], fingerprint, file))
            })
            .await
            .map_err(|panicked| opened(std::io::Error::other(panicked.to_string())))?
            .map_err(opened)?;
            file = returned;
            after_cr = before == b'\r';
            read_tail = Some(fingerprint);
            if !matches!(before, b'\n' | b'\r') && offset < length {
                return Err(misfit(format!(
                    "byte {offset} of {} does not follow a line's end",
                    path.display()
                )));
            }
            if from.fingerprint.is_some_and(|recorded| recorded != fingerprint) {
                return Err(misfit(format!(
                    "the bytes before byte {offset} of {} are not those it recorded",
                    path.display()
                )));
            }
        }
        let input = Arc::new(file.try_clone().map_err(opened)?);
        let mut file = tokio::fs::File::from_std(file);
        file.seek(SeekFrom::Start(offset)).await.map_err(opened)?;
        Ok(Reader {
            path: path.to_owned(),
            file,
            input,
            buffer: BytesMut::new(),
            splitter: Splitter::new(format),
            at: from.position,
            at_end: false,
            after_cr,
            read_tail,
            follow,
            max_record_bytes,
        })
    }

    /// The next record among those read, without waiting. Empty lines are passed over.
    pub(crate) fn next(&mut self) -> Result<Next, FileSourceError> {
        loop {
            let (end, ended) = match self.splitter.end(&self.buffer) {
                Some(end) => (end, true),
                None if self.buffer.len() > self.max_record_bytes + 2 => {
                    return Err(self.too_long());
                }
                // A last record without its line ending, at the end of a file not followed.
                None if self.at_end && !self.follow && !self.buffer.is_empty() => (self.buffer.len(), false),
                None if self.at_end && !self.follow => return Ok(Next::End),
                None => return Ok(Next::More),
            };
            // The line ending is not part of the record (nor, for CSV, a `\n` left over
            // from a `\r\n` whose `\r` ended the record before).
            let trimmed = trim_line_ends(&self.buffer[..end], ended);
            if trimmed.len() > self.max_record_bytes {
                // Looked at again from its start by the next call, which fails the same.
                self.splitter.restart();
                return Err(self.too_long());
            }
            if ended {
                self.splitter.taken();
            } else {
                self.splitter.restart();
            }
            let mut bytes = self.buffer.split_to(end).freeze();
            let at = self.at;
            // The record starts after the line endings trimmed off its front.
            let (leading, _) = line_endings(&bytes[..trimmed.start], self.after_cr);
            let start = Position {
                offset: at.offset + trimmed.start as u64,
                line: at.line.saturating_add(leading),
            };
            let (lines, ends_in_cr) = line_endings(&bytes, self.after_cr);
            self.after_cr = ends_in_cr;
            self.at = Position {
                offset: at.offset + end as u64,
                line: at.line.saturating_add(lines),
            };
            bytes = bytes.slice(trimmed);
            if bytes.is_empty() {
                continue;
            }
            return Ok(Next::Record(Record {
                bytes,
                start,
                end: self.at,
            }));
        }
    }

    /// Reads the next block; at the end of a followed file, waits `poll` first if the
    /// last read found nothing, and checks that the file is still the one being read
    /// (not cut short, not replaced by another under its name). Cancel safe: a read
    /// dropped loses nothing.
    pub(crate) async fn read_more(&mut self, poll: Duration) -> Result<(), FileSourceError> {
        if self.at_end && self.follow {
            tokio::time::sleep(poll).await;
            self.check_still_followed().await?;
        }
        self.check_unchanged()?;
        self.buffer.reserve(BLOCK);
        let read = self
            .file
            .read_buf(&mut self.buffer)
            .await
            .map_err(|error| FileSourceError::io("reading", &self.path, error))?;
        self.at_end = read == 0;
        // No wait from here on: what was read and its fingerprint go together.
        if read > 0 {
            let read_to = self.read_to();
            let tail = read_to.min(checkpoint::FINGERPRINTED) as usize;
            self.read_tail = Some(if self.buffer.len() >= tail {
                checkpoint::fingerprint_of(&self.buffer)
            } else {
                // Most of it taken out already: read again, at once.
                self.fingerprint_at(read_to)?
            });
        }
        Ok(())
    }

    /// Fails if the bytes just before `read_to` are no longer those read (the file
    /// rewritten in place, or cut short and grown again) or are gone (cut short).
    fn check_unchanged(&self) -> Result<(), FileSourceError> {
        let Some(read) = self.read_tail else {
            return Ok(());
        };
        let read_to = self.read_to();
        let changed = |reason: String| FileSourceError::Changed {
            path: self.path.clone(),
            reason,
        };
        match self.fingerprint_at(read_to) {
            Ok(now) if now == read => Ok(()),
            Ok(_) => Err(changed(format!(
                "the bytes before byte {read_to} are no longer those read: rewritten in place while read? (the records after the checkpoint are read again once the pipeline starts over)"
            ))),
            Err(FileSourceError::Io { source, .. }) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(changed(format!("cut short under the {read_to} bytes read")))
            }
            Err(error) => Err(error),
        }
    }

    /// The fingerprint of the file's bytes just before `offset`, read now.
    ///
    /// Read in place, not on the blocking pool: 64 bytes just read, in the page cache, take
    /// a microsecond, where a hop to the pool and back cost the reader 8% of its rate.
    fn fingerprint_at(&self, offset: u64) -> Result<u64, FileSourceError> {
        checkpoint::fingerprint(&self.input, offset)
            .map_err(|error| FileSourceError::io("reading", &self.path, error))
    }

    /// A followed file cut short (a `copytruncate` rotation) or renamed away (the name now
    /// another file's) can no longer be read where the checkpoint says: say so.
    async fn check_still_followed(&mut self) -> Result<(), FileSourceError> {
        let open = self.file.metadata().await;
        let named = tokio::fs::metadata(&self.path).await;
        let (open, named) = match (open, named) {
            (Ok(open), Ok(named)) => (open, named),
            (Err(error), _) | (_, Err(error)) => {
                return Err(FileSourceError::io("following", &self.path, error));
            }
        };
        let gone = |reason: String| FileSourceError::Followed {
            path: self.path.clone(),
            reason,
        };
        if open.len() < self.read_to() {
            return Err(gone(format!(
                "cut short to {} bytes under the {} read (a copytruncate rotation?)",
                open.len(),
                self.read_to()
            )));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if (open.dev(), open.ino()) != (named.dev(), named.ino()) {
                return Err(gone(
                    "its name is now another file's (rotated by renaming?)".to_owned(),
                ));
            }
        }
        #[cfg(not(unix))]
        let _ = named;
        Ok(())
    }

    /// The length of the file, as last looked at (at the end of what was read, when
    /// followed).
    pub(crate) async fn length(&self) -> Option<u64> {
        self.file.metadata().await.ok().map(|m| m.len())
    }

    /// The open file being read, for its checkpoint: not whatever file has its name now.
    pub(crate) fn input(&self) -> Arc<std::fs::File> {
        self.input.clone()
    }

    /// Whether the last read found the end of the file.
    pub(crate) fn at_end(&self) -> bool {
        self.at_end
    }

    /// Where reading has got to in the file: the position of what is buffered, plus it.
    pub(crate) fn read_to(&self) -> u64 {
        self.at.offset + self.buffer.len() as u64
    }

    fn too_long(&self) -> FileSourceError {
        FileSourceError::RecordTooLong {
            path: self.path.clone(),
            line: self.at.line,
            offset: self.at.offset,
            max: self.max_record_bytes,
        }
    }
}

/// Line endings in `bytes`: each `\n`, and each `\r` not followed by one; a `\n` first
/// in `bytes` after a `\r` last in the record before (csv-core ends a record at the `\r`
/// of a `\r\n`) is the same ending, not counted twice. Also whether `bytes` ends in `\r`.
fn line_endings(bytes: &[u8], after_cr: bool) -> (u64, bool) {
    // A count in bytes (at most 255 a chunk), which the compiler vectorizes: an iterator
    // of matches is set up anew for each record, several times the cost of counting a
    // line's hundred bytes.
    let newlines: usize = bytes
        .chunks(255)
        .map(|chunk| {
            let in_chunk = chunk.iter().fold(0u8, |n, &byte| n + u8::from(byte == b'\n'));
            usize::from(in_chunk)
        })
        .sum();
    // Most records have no `\r` at all: one search says so.
    let lone_returns = match memchr::memchr(b'\r', bytes) {
        None => 0,
        Some(first) => memchr::memchr_iter(b'\r', &bytes[first..])
            .filter(|&at| bytes.get(first + at + 1) != Some(&b'\n'))
            .count(),
    };
    let same_ending = after_cr && bytes.first() == Some(&b'\n');
    let count = newlines + lone_returns - usize::from(same_ending);
    (count as u64, bytes.last() == Some(&b'\r'))
}

/// The range of `bytes` without line endings: at its start (what is left of the ending
/// before), and at its end when it `ended` there (an unended last record's trailing
/// newlines may be inside its quotes).
fn trim_line_ends(bytes: &[u8], ended: bool) -> std::ops::Range<usize> {
    let ending = |b: &u8| *b == b'\n' || *b == b'\r';
    let start = bytes.iter().position(|b| !ending(b)).unwrap_or(bytes.len());
    let end = if ended {
        bytes.iter().rposition(|b| !ending(b)).map_or(start, |at| at + 1)
    } else {
        bytes.len()
    };
    start..end
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Splits `text` whole, the way the reader does, fed in pieces of `piece` bytes.
    fn split(format: Format, text: &[u8], piece: usize) -> Vec<Vec<u8>> {
        let mut splitter = Splitter::new(format);
        let mut buffer = Vec::new();
        let mut records = Vec::new();
        for chunk in text.chunks(piece.max(1)) {
            buffer.extend_from_slice(chunk);
            while let Some(end) = splitter.end(&buffer) {
                splitter.taken();
                records.push(buffer.drain(..end).collect());
            }
        }
        records
    }

    proptest! {
        /// Line endings counted as the plain definition says: each `\n`, each `\r` not
        /// followed by one, less a `\n` first after a `\r` that ended the record before.
        #[test]
        fn line_endings_are_counted_as_defined(
            bytes in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a')], 0..200),
            after_cr: bool,
        ) {
            let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
            let lone = (0..bytes.len()).filter(|&i| bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n')).count();
            let same = usize::from(after_cr && bytes.first() == Some(&b'\n'));
            let expected = ((newlines + lone - same) as u64, bytes.last() == Some(&b'\r'));
            prop_assert_eq!(line_endings(&bytes, after_cr), expected);
        }
    }

    #[test]
    fn csv_ends_records_where_the_csv_crate_does() {
        // A quote inside an unquoted field is text; CRLF and a lone CR end records.
        let text = b"1,5\" tv\n2,7\" tv\r\n3,x\r4,y\n";
        let records: Vec<Vec<u8>> = split(Format::Csv, text, 1);
        let joined: Vec<u8> = records.concat();
        assert_eq!(joined, text.to_vec(), "every byte in one record or another");
        let fields: Vec<&[u8]> = records
            .iter()
            .map(|r| &r[trim_line_ends(r, true)])
            .filter(|r| !r.is_empty())
            .collect();
        assert_eq!(fields, [&b"1,5\" tv"[..], b"2,7\" tv", b"3,x", b"4,y"]);
        let mut after_cr = false;
        let endings: u64 = records
            .iter()
            .map(|r| {
                let (count, cr) = line_endings(r, after_cr);
                after_cr = cr;
                count
            })
            .sum();
        assert_eq!(endings, 4, "{records:?}");
    }

    #[test]
    fn csv_records_may_hold_newlines_in_quotes() {
        let text = b"a,\"two\nlines\",c\n\"say \"\"hi\"\"\n\",x\nlast,row\n";
        let records = split(Format::Csv, text, 3);
        assert_eq!(
            records,
            [
                b"a,\"two\nlines\",c\n".to_vec(),
                b"\"say \"\"hi\"\"\n\",x\n".to_vec(),
                b"last,row\n".to_vec()
            ]
        );
    }

    /// The records of `text` as the csv crate reads it whole.
    fn csv_crate_records(text: &[u8]) -> Vec<Vec<Vec<u8>>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text)
            .byte_records()
            .map(|r| r.unwrap().iter().map(<[u8]>::to_vec).collect())
            .collect()
    }

    proptest! {
        /// Any bytes of quotes, commas, CRs and LFs, fed in any pieces: each record the
        /// splitter finds is, read alone, exactly one record, and together they are the
        /// records the csv crate reads from the whole text.
        #[test]
        fn csv_splits_where_the_csv_crate_reads(text in "[a,\"\r\n]{0,60}", piece in 1usize..20) {
            let text = text.as_bytes();
            let mut records = split(Format::Csv, text, piece);
            let taken: usize = records.iter().map(Vec::len).sum();
            let ended = records.len();
            if taken < text.len() {
                records.push(text[taken..].to_vec());
            }
            let mut ours = Vec::new();
            for (at, record) in records.iter().enumerate() {
                let trimmed = &record[trim_line_ends(record, at < ended)];
                if trimmed.is_empty() {
                    continue;
                }
                let alone = csv_crate_records(trimmed);
                prop_assert_eq!(alone.len(), 1, "{:?} is not one record", String::from_utf8_lossy(trimmed));
                ours.extend(alone);
            }
            prop_assert_eq!(ours, csv_crate_records(text));
        }

        /// Fed in any pieces, lines split where the newlines are.
        #[test]
        fn lines_split_at_every_newline_whatever_the_pieces(
            lines in proptest::collection::vec("[a-z\",]{0,12}", 0..30),
            piece in 1usize..40,
        ) {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let records = split(Format::Lines, text.as_bytes(), piece);
            let expected: Vec<Vec<u8>> = lines.iter().map(|l| format!("{l}\n").into_bytes()).collect();
            prop_assert_eq!(records, expected);
        }

        /// CSV written by the csv crate, with quotes and newlines in fields, splits back
        /// into the records it wrote, whatever the pieces.
        #[test]
        fn csv_splits_into_the_records_written(
            rows in proptest::collection::vec(proptest::collection::vec("[a-z\",\n ]{0,8}", 1..4), 0..20),
            piece in 1usize..40,
        ) {
            let mut expected = Vec::new();
            for row in &rows {
                let mut writer = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
                writer.write_record(row).unwrap();
                expected.push(writer.into_inner().unwrap());
            }
            let text = expected.concat();
            prop_assert_eq!(split(Format::Csv, &text, piece), expected);
        }
    }
}
