//! The checkpoint file: the position before which every record is acknowledged, and a
//! fingerprint of the bytes just before it, so that a file replaced since is refused
//! rather than read from the wrong place. Written whole to a temporary file and renamed
//! over the old one: a kill at any moment leaves the old position or the new one. A lock
//! beside it keeps a second reader of the same checkpoint out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::FileSourceError;
use crate::progress::Position;

const HEADER: &str = "# longshore file checkpoint: every record before this byte offset is acknowledged";

/// How long a source waits for the checkpoint's lock before refusing to start.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How many bytes before the position the fingerprint covers.
pub(crate) const FINGERPRINTED: u64 = 64;

/// A position as recorded, with the fingerprint of the bytes before it (none before the
/// file's start, or in a checkpoint of an older version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) position: Position,
    pub(crate) fingerprint: Option<u64>,
}

/// The position recorded at `path`; the file's start when there is none.
pub(crate) fn read(path: &Path) -> Result<Recorded, FileSourceError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Recorded {
                position: Position { offset: 0, line: 1 },
                fingerprint: None,
            });
        }
        Err(error) => return Err(FileSourceError::io("reading the checkpoint", path, error)),
    };
    let field = |name: &str, radix: u32| {
        text.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(' ')?.trim();
            u64::from_str_radix(value, radix).ok()
        })
    };
    let (Some(offset), Some(line)) = (field("offset", 10), field("line", 10)) else {
        return Err(not_a_checkpoint(path, &text));
    };
    if line < 1 {
        return Err(not_a_checkpoint(path, &text));
    }
    // A fingerprint that does not read is refused, not taken as none: with none, a file
    // replaced since would be read from the recorded offset.
    let fingerprint = match text.lines().find_map(|line| line.strip_prefix("before ")) {
        Some(value) => {
            Some(u64::from_str_radix(value.trim(), 16).map_err(|_| not_a_checkpoint(path, &text))?)
        }
        None => {
            if offset > 0 {
                tracing::warn!(checkpoint = %path.display(), "the checkpoint has no fingerprint (written by an older version): a file replaced since would not be noticed this once");
            }
            None
        }
    };
    Ok(Recorded {
        position: Position { offset, line },
        fingerprint,
    })
}

fn not_a_checkpoint(path: &Path, text: &str) -> FileSourceError {
    FileSourceError::Checkpoint {
        path: path.to_owned(),
        reason: format!("not a checkpoint (expected `offset N`, `line N` and `before <hex>`): {text:?}"),
    }
}

/// The folder `path` is in: the current one for a bare file name.
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    }
}

/// Removes the temporary files of writes a kill cut short (`<checkpoint>.tmp.<pid>.<n>`):
/// called holding the checkpoint's lock, so no write of another source is under way.
pub(crate) fn remove_leftovers(path: &Path) {
    let Some(name) = path.file_name() else {
        return;
    };
    let mut prefix = name.to_os_string();
    prefix.push(".tmp.");
    let Ok(entries) = std::fs::read_dir(folder_of(path)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(prefix.as_encoded_bytes())
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The fingerprint of the (up to) 64 bytes of `file` before `offset` (FNV-1a, 64 bits):
/// what tells the file the checkpoint was written for from another. Read at their
/// position: the file's own position (shared with the reader's handle) does not move.
pub(crate) fn fingerprint(file: &std::fs::File, offset: u64) -> std::io::Result<u64> {
    let from = offset.saturating_sub(FINGERPRINTED);
    let mut bytes = vec![0; (offset - from) as usize];
    read_exact_at(file, &mut bytes, from).map_err(|error| match error.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            std::io::Error::new(error.kind(), "the file is shorter than the position")
        }
        _ => error,
    })?;
    Ok(fingerprint_of(&bytes))
}

/// The fingerprint of the (up to) 64 bytes at the end of `bytes` (FNV-1a, 64 bits).
pub(crate) fn fingerprint_of(bytes: &[u8]) -> u64 {
    let from = bytes.len().saturating_sub(FINGERPRINTED as usize);
    bytes[from..]
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash: u64, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, bytes: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, bytes, at)
}

/// Elsewhere a read at a position moves the file's position, which the reader's handle
/// shares: refused, rather than reading records from the wrong place.
#[cfg(not(unix))]
fn read_exact_at(_: &std::fs::File, _: &mut [u8], _: u64) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "checkpoints need positional reads (Unix)",
    ))
}

/// Records `position` of `input` (the file being read, by the handle it is read with:
/// not whatever file has its name now, which may have been replaced since) at `path`;
/// with `sync`, durably (it survives the machine, not only the process: the file and its
/// folder are synced). Either way the new checkpoint's bytes are synced before it takes
/// the old one's name, so that a machine crash leaves the old checkpoint or the new one,
/// never an empty file.
pub(crate) fn write(
    path: &Path,
    input: &std::fs::File,
    position: Position,
    sync: bool,
) -> std::io::Result<()> {
    // A name of its own per write: a write abandoned by a cancelled flush never meets
    // the next one in the same temporary file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let fingerprint = fingerprint(input, position.offset)?;
    let mut temporary = PathBuf::from(path);
    temporary.as_mut_os_string().push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let text = format!(
        "{HEADER}\noffset {}\nline {}\nbefore {fingerprint:016x}\n",
        position.offset, position.line
    );
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_data()?;
    drop(file);
    if let Err(error) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    if sync {
        std::fs::File::open(folder_of(path))?.sync_all()?;
    }
    Ok(())
}

/// Holds `<checkpoint>.lock` exclusively for as long as it lives: a second source on the
/// same checkpoint (another process, a rolling update on a shared volume) is refused.
/// The system lets it go when the process ends, however it ends.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: std::fs::File,
}

impl Lock {
    pub(crate) fn take(checkpoint: &Path) -> Result<Self, FileSourceError> {
        let mut path = PathBuf::from(checkpoint);
        path.as_mut_os_string().push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| FileSourceError::io("opening the checkpoint's lock", &path, error))?;
        // A source of this process just dropped may hold it a moment more, while its
        // last write ends.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(FileSourceError::Checkpoint {
                        path: checkpoint.to_owned(),
                        reason: "another source reads with it (its lock is held)".to_owned(),
                    })
                }
                Err(std::fs::TryLockError::Error(error)) => {
                    return Err(FileSourceError::io("locking the checkpoint", &path, error))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_position_reads_back_with_its_fingerprint_and_garbage_is_refused() {
        let dir = std::env::temp_dir().join(format!("longshore-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, input) = (dir.join("data.checkpoint"), dir.join("data"));
        std::fs::write(&input, "one\ntwo\n").unwrap();
        assert_eq!(read(&path).unwrap().position, Position { offset: 0, line: 1 });
        let position = Position { offset: 4, line: 2 };
        let file = std::fs::File::open(&input).unwrap();
        write(&path, &file, position, true).unwrap();
        let recorded = read(&path).unwrap();
        assert_eq!(recorded.position, position);
        assert_eq!(recorded.fingerprint, Some(fingerprint(&file, 4).unwrap()));
        assert_ne!(recorded.fingerprint, Some(fingerprint(&file, 3).unwrap()));
        std::fs::write(&path, "offset twelve\n").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("not a checkpoint"), "{error}");
        // A fingerprint that does not read is not taken as none.
        std::fs::write(&path, "offset 4\nline 2\nbefore xyz\n").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("not a checkpoint"), "{error}");
        // Temporary files a kill left behind go; the checkpoint and others stay.
        let leftover = dir.join("data.checkpoint.tmp.7.0");
        std::fs::write(&leftover, "offset 9\n").unwrap();
        remove_leftovers(&path);
        assert!(!leftover.exists(), "a leftover temporary file stayed");
        assert!(path.exists() && input.exists());
        let lock = Lock::take(&path).unwrap();
        let error = Lock::take(&path).unwrap_err().to_string();
        assert!(error.contains("another source reads with it"), "{error}");
        drop(lock);
        Lock::take(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
