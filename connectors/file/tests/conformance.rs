//! The source contract (`longshore::testing::conformance`) over a real file on disk,
//! followed as it grows: published records are appended lines, the server's "nothing
//! unfinished" is the checkpoint at the file's end, and the `kill -9` check kills a
//! consumer process of this crate mid-file.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use longshore::testing::conformance::{Broker, Conformance, Declared, Published};
use longshore::{BoxError, Message};
use longshore_file::{Bytes, FileConfig, FileMetadata, FileSource};

/// The consumer process reads no further than this past its checkpoint: what a kill can
/// make it handle twice.
const CONSUMER_MAX_UNRECORDED: usize = 500;

struct File {
    dir: PathBuf,
    path: PathBuf,
}

impl File {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("longshore-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records.csv");
        std::fs::File::create(&path).unwrap();
        File { dir, path }
    }

    fn checkpoint(&self) -> PathBuf {
        FileConfig::new(&self.path).checkpoint_path()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Broker for File {
    type Source = FileSource;

    fn declared(&self) -> Declared {
        Declared::new()
    }

    async fn publish(&self, messages: Vec<Published>) -> Result<(), BoxError> {
        let lines: String = messages.iter().map(|m| format!("{},{}\n", m.id, m.key)).collect();
        let mut file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        file.write_all(lines.as_bytes())?;
        Ok(())
    }

    async fn source(&self) -> Result<FileSource, BoxError> {
        let config = FileConfig::new(&self.path)
            .follow(true)
            .poll_interval(Duration::from_millis(20));
        Ok(FileSource::open(config).await?)
    }

    fn identify(&self, message: &Message<Bytes, FileMetadata>) -> Published {
        Published::from_text(message.data())
    }

    async fn taken(&self, source: &FileSource) -> Result<usize, BoxError> {
        Ok(source.outstanding())
    }

    async fn settled(&self) -> Result<bool, BoxError> {
        let length = std::fs::metadata(&self.path)?.len();
        let checkpoint = match std::fs::read_to_string(self.checkpoint()) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(length == 0),
            Err(error) => return Err(error.into()),
        };
        let offset: u64 = checkpoint
            .lines()
            .find_map(|line| line.strip_prefix("offset "))
            .ok_or("no offset in the checkpoint")?
            .parse()?;
        Ok(offset == length)
    }

    fn consumer(&self, output: &std::path::Path) -> Option<std::process::Command> {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_file-count-consumer"));
        command
            // Slow enough that the kill lands mid-stream (see `Broker::consumer`).
            .env("LONGSHORE_CHAOS_SINK_MS", "20")
            .arg(&self.path)
            .arg(output)
            .arg("follow")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Some(command)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_file_keeps_the_source_contract() {
    let report = Conformance::new(File::new("conformance"))
        .messages(200)
        .timeout(Duration::from_secs(30))
        .run()
        .await
        .unwrap();
    println!("CONFORMANCE file {report:?}");
    assert_eq!(report.passed.len(), 6, "{report:?}");
    let duplicates = report.duplicates_after_kill.expect("the kill check ran");
    assert!(
        duplicates <= CONSUMER_MAX_UNRECORDED,
        "{duplicates} handled twice after the kill; the consumer reads at most {CONSUMER_MAX_UNRECORDED} past its checkpoint"
    );
}
