//! The checkpoint file: the position before which every record is acknowledged, written
//! whole to a temporary file and renamed over the old one, so that a kill at any moment
//! leaves the old position or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::FileSourceError;
use crate::progress::Position;

const HEADER: &str = "# longshore file checkpoint: every record before this byte offset is acknowledged";

/// The position recorded at `path`; the file's start when there is none.
pub(crate) fn read(path: &Path) -> Result<Position, FileSourceError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Position { offset: 0, line: 1 });
        }
        Err(error) => return Err(FileSourceError::io("reading the checkpoint", path, error)),
    };
    let field = |name: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    match (field("offset"), field("line")) {
        (Some(offset), Some(line)) if line >= 1 => Ok(Position { offset, line }),
        _ => Err(FileSourceError::Checkpoint {
            path: path.to_owned(),
            reason: format!("not a checkpoint (expected `offset N` and `line N`): {text:?}"),
        }),
    }
}

/// Records `position` at `path`; with `sync`, durably (it survives the machine, not only
/// the process).
pub(crate) fn write(path: &Path, position: Position, sync: bool) -> std::io::Result<()> {
    let mut temporary = PathBuf::from(path);
    temporary.as_mut_os_string().push(".tmp");
    let mut file = std::fs::File::create(&temporary)?;
    write!(
        file,
        "{HEADER}\noffset {}\nline {}\n",
        position.offset, position.line
    )?;
    if sync {
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_position_reads_back_and_garbage_is_refused() {
        let dir = std::env::temp_dir().join(format!("longshore-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data.checkpoint");
        assert_eq!(read(&path).unwrap(), Position { offset: 0, line: 1 });
        let position = Position {
            offset: 1234,
            line: 56,
        };
        write(&path, position, true).unwrap();
        assert_eq!(read(&path).unwrap(), position);
        std::fs::write(&path, "offset twelve\n").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("not a checkpoint"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
