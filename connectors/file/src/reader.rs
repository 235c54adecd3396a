//! Reading records from the file, a block at a time, without copying them: each record is
//! a slice of the block it was read in.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::config::Format;
use crate::error::FileSourceError;
use crate::progress::Position;

/// How much is read from the file at once.
const BLOCK: usize = 256 * 1024;

/// Finds where records end in a buffer, remembering how far it looked and, for CSV,
/// whether that point is inside double quotes.
#[derive(Debug)]
pub(crate) struct Splitter {
    format: Format,
    scanned: usize,
    in_quotes: bool,
}

impl Splitter {
    pub(crate) fn new(format: Format) -> Self {
        Splitter {
            format,
            scanned: 0,
            in_quotes: false,
        }
    }

    /// The index of the newline ending the first record of `buffer`, if it is complete.
    /// `buffer` only grows between calls, until [`Splitter::taken`].
    pub(crate) fn end(&mut self, buffer: &[u8]) -> Option<usize> {
        match self.format {
            Format::Lines => match memchr::memchr(b'\n', &buffer[self.scanned..]) {
                Some(at) => Some(self.scanned + at),
                None => {
                    self.scanned = buffer.len();
                    None
                }
            },
            Format::Csv => {
                // `""` inside quotes flips twice: it stays quoted, as it should.
                while let Some(at) = memchr::memchr2(b'"', b'\n', &buffer[self.scanned..]) {
                    let at = self.scanned + at;
                    self.scanned = at + 1;
                    if buffer[at] == b'"' {
                        self.in_quotes = !self.in_quotes;
                    } else if !self.in_quotes {
                        return Some(at);
                    }
                }
                self.scanned = buffer.len();
                None
            }
        }
    }

    /// The first record was taken off the buffer: start afresh after it.
    pub(crate) fn taken(&mut self) {
        self.scanned = 0;
        self.in_quotes = false;
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
    buffer: BytesMut,
    splitter: Splitter,
    /// The position of `buffer[0]`.
    at: Position,
    /// The file had nothing more at the last read.
    at_end: bool,
    follow: bool,
    max_record_bytes: usize,
}

impl Reader {
    /// Opens `path` at `from`, refusing a position that does not fit the file (past
    /// its end, or not just after a newline: the file was replaced or cut short).
    pub(crate) async fn open(
        path: &Path,
        from: Position,
        format: Format,
        follow: bool,
        max_record_bytes: usize,
        checkpoint: &Path,
    ) -> Result<Self, FileSourceError> {
        let opened = |error| FileSourceError::io("opening", path, error);
        let mut file = tokio::fs::File::open(path).await.map_err(opened)?;
        let length = file.metadata().await.map_err(opened)?.len();
        let misfit = |reason: String| {
            FileSourceError::Checkpoint {
            path: checkpoint.to_owned(),
            reason: format!("{reason}; the file was replaced or cut short since (delete the checkpoint to read it again from the start)"),
        }
        };
        if from.offset > length {
            return Err(misfit(format!(
                "records byte {} of {}, which has {length}",
                from.offset,
                path.display()
            )));
        }
        if from.offset > 0 && from.offset < length {
            file.seek(SeekFrom::Start(from.offset - 1))
                .await
                .map_err(opened)?;
            let before = file.read_u8().await.map_err(opened)?;
            if before != b'\n' {
                return Err(misfit(format!(
                    "byte {} of {} does not follow a line's end",
                    from.offset,
                    path.display()
                )));
            }
        }
        file.seek(SeekFrom::Start(from.offset)).await.map_err(opened)?;
        Ok(Reader {
            path: path.to_owned(),
            file,
            buffer: BytesMut::new(),
            splitter: Splitter::new(format),
            at: from,
            at_end: false,
            follow,
            max_record_bytes,
        })
    }

    /// The next record among those read, without waiting. Empty lines are passed over.
    pub(crate) fn next(&mut self) -> Result<Next, FileSourceError> {
        loop {
            let end = match self.splitter.end(&self.buffer) {
                Some(end) => end + 1,
                None if self.buffer.len() > self.max_record_bytes => {
                    return Err(self.too_long());
                }
                // A last line without its newline, at the end of a file not followed.
                None if self.at_end && !self.follow && !self.buffer.is_empty() => self.buffer.len(),
                None if self.at_end && !self.follow => return Ok(Next::End),
                None => return Ok(Next::More),
            };
            if end > self.max_record_bytes + 1 {
                // Looked at again from its start by the next call, which fails the same.
                self.splitter.taken();
                return Err(self.too_long());
            }
            self.splitter.taken();
            let mut bytes = self.buffer.split_to(end).freeze();
            let start = self.at;
            let lines = memchr::memchr_iter(b'\n', &bytes).count() as u64;
            self.at = Position {
                offset: start.offset + end as u64,
                line: start.line + lines,
            };
            if bytes.last() == Some(&b'\n') {
                bytes.truncate(bytes.len() - 1);
            }
            if bytes.last() == Some(&b'\r') {
                bytes.truncate(bytes.len() - 1);
            }
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
    /// last read found nothing. Cancel safe: a read dropped loses nothing.
    pub(crate) async fn read_more(&mut self, poll: Duration) -> Result<(), FileSourceError> {
        if self.at_end && self.follow {
            tokio::time::sleep(poll).await;
        }
        self.buffer.reserve(BLOCK);
        let read = self
            .file
            .read_buf(&mut self.buffer)
            .await
            .map_err(|error| FileSourceError::io("reading", &self.path, error))?;
        self.at_end = read == 0;
        Ok(())
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
                records.push(buffer.drain(..=end).collect());
            }
        }
        records
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

    proptest! {
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
