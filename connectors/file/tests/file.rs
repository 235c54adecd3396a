//! The file source on real files: CSV with headers and quoted newlines decoded by column
//! name, the checkpoint never past a record not acknowledged, a restart resuming at it, a
//! file cut short refused, a record too long failing the pipeline with its line, and a
//! bad setting refused at start.

#[path = "../../../test-support/documented.rs"]
mod documented;
#[path = "../../../tests/common/mod.rs"]
mod http;
#[path = "../../../test-support/prometheus.rs"]
mod prometheus;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use longshore::source::{Acknowledger, Source};
use longshore::{BoxError, Handler, Pipeline, PipelineError, Processors};
use longshore_file::{Csv, FileConfig, FileMessage, FileMetadata, FileSource, FileSourceError, Format};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("longshore-file-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, PartialEq, serde::Deserialize)]
struct Row {
    id: u64,
    note: String,
}

#[derive(Default)]
struct Collect(Mutex<Vec<(u64, Row)>>);

impl Handler for &'static Collect {
    type Item = Row;
    type Metadata = FileMetadata;

    async fn handle_message(&self, message: &mut FileMessage<Row>) -> Result<(), BoxError> {
        let line = message.metadata().line();
        let row = std::mem::replace(
            message.data_mut(),
            Row {
                id: 0,
                note: String::new(),
            },
        );
        self.0.lock().unwrap().push((line, row));
        Ok(())
    }
}

/// The next `n` records of `source`, as a pipeline's producer asks for them.
async fn next(source: &FileSource, n: usize) -> Vec<FileMessage> {
    source
        .receive(NonZeroUsize::new(n).unwrap())
        .await
        .unwrap()
        .unwrap()
}

/// Acknowledges `records` and writes the checkpoint, as a pipeline's end does.
async fn finish(source: &FileSource, records: Vec<FileMessage>) {
    let acknowledger = source.acknowledger();
    acknowledger.ack(records, Vec::new()).await;
    acknowledger.flush().await;
}

fn checkpoint_offset(config: &FileConfig) -> u64 {
    let text = std::fs::read_to_string(config.checkpoint_path()).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("offset "))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_rows_are_decoded_by_their_header_and_a_rerun_reads_nothing_again() {
    let dir = Dir::new("csv");
    // Columns in another order than the struct's, a quoted newline, a CRLF, no final newline.
    let text = "note,id\r\nfirst,1\n\"two\nlines\",2\n\n\"say \"\"hi\"\"\",3";
    let path = dir.file("rows.csv", text);
    let config = FileConfig::new(&path).format(Format::Csv);
    let collected: &'static Collect = Box::leak(Box::default());
    let source = FileSource::open(config.clone()).await.unwrap();
    let pipeline = Pipeline::builder(source, collected)
        .decode(Csv::new())
        .processors(Processors::new(1))
        .start()
        .unwrap();
    let summary = pipeline.wait().await.unwrap();
    assert_eq!(summary.successful, 3);
    let mut rows = std::mem::take(&mut *collected.0.lock().unwrap());
    rows.sort_by_key(|(line, _)| *line);
    let row = |id, note: &str| Row {
        id,
        note: note.into(),
    };
    assert_eq!(
        rows,
        [
            (2, row(1, "first")),
            (3, row(2, "two\nlines")),
            (6, row(3, "say \"hi\""))
        ]
    );
    assert_eq!(checkpoint_offset(&config), text.len() as u64);

    // Run again: the checkpoint is at the end, nothing comes twice.
    let source = FileSource::open(config).await.unwrap();
    let pipeline = Pipeline::builder(source, collected)
        .decode(Csv::new())
        .start()
        .unwrap();
    assert_eq!(pipeline.wait().await.unwrap().successful, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_stops_before_the_first_record_not_acknowledged_and_a_restart_resumes_there() {
    let dir = Dir::new("resume");
    let text: String = (0..10).map(|n| format!("record {n}\n")).collect();
    let path = dir.file("records.txt", &text);
    let config = FileConfig::new(&path);
    let source = FileSource::open(config.clone()).await.unwrap();
    let acknowledger = source.acknowledger();
    let mut records = source
        .receive(NonZeroUsize::new(10).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(records.len(), 10);
    // Record 5 (line 6) is not acknowledged; all the others are, out of order.
    let unfinished = records.remove(5);
    records.reverse();
    acknowledger.ack(records, Vec::new()).await;
    acknowledger.flush().await;
    assert_eq!(checkpoint_offset(&config), unfinished.metadata().offset());
    drop((source, acknowledger, unfinished));

    let source = FileSource::open(config).await.unwrap();
    let again = source
        .receive(NonZeroUsize::new(10).unwrap())
        .await
        .unwrap()
        .unwrap();
    let lines: Vec<u64> = again.iter().map(|m| m.metadata().line()).collect();
    // From line 6 on: the records after it that were done come again (at-least-once).
    assert_eq!(lines, [6, 7, 8, 9, 10]);
    assert_eq!(&again[0].data()[..], b"record 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cut_short_under_its_checkpoint_is_refused() {
    let dir = Dir::new("cut");
    let path = dir.file("records.txt", "one\ntwo\nthree\n");
    let config = FileConfig::new(&path);
    std::fs::write(config.checkpoint_path(), "offset 8\nline 3\n").unwrap();
    FileSource::open(config.clone()).await.unwrap();
    // Replaced by a shorter file.
    std::fs::write(&path, "one\n").unwrap();
    let error = FileSource::open(config.clone()).await.unwrap_err();
    assert!(matches!(error, FileSourceError::Checkpoint { .. }), "{error}");
    assert!(error.to_string().contains("records byte 8"), "{error}");
    // Replaced by one whose lines fall elsewhere.
    std::fs::write(&path, "a longer first line\n").unwrap();
    let error = FileSource::open(config).await.unwrap_err();
    assert!(
        error.to_string().contains("does not follow a line's end"),
        "{error}"
    );
}

struct Ok_;

impl Handler for Ok_ {
    type Item = longshore_file::Bytes;
    type Metadata = FileMetadata;

    async fn handle_message(&self, _: &mut FileMessage) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_long_fails_the_pipeline_naming_its_line_and_loses_nothing_before_it() {
    let dir = Dir::new("long");
    let text = format!("short\nshort too\n{}\nafter\n", "x".repeat(300));
    let path = dir.file("records.txt", &text);
    let config = FileConfig::new(&path).max_record_bytes(100);
    let source = FileSource::open(config.clone()).await.unwrap();
    let pipeline = Pipeline::builder(source, Ok_).start().unwrap();
    let error = tokio::time::timeout(Duration::from_secs(20), pipeline.wait())
        .await
        .expect("the pipeline stops")
        .unwrap_err();
    assert!(matches!(error, PipelineError::Failed { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("line 3") && text.contains("max_record_bytes"),
        "{text}"
    );
    // The two records before it were done and recorded; the long one was not skipped.
    assert_eq!(checkpoint_offset(&config), "short\nshort too\n".len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_cannot_work_are_refused_naming_the_field() {
    let dir = Dir::new("settings");
    let path = dir.file("records.txt", "one\n");
    let source = FileSource::open(FileConfig::new(&path).max_unrecorded(10))
        .await
        .unwrap();
    let error = Pipeline::builder(source, Ok_)
        .processors(Processors::new(4).max_demand(50))
        .start()
        .unwrap_err();
    assert!(error.to_string().contains("source.max_unrecorded"), "{error}");
    let error = FileSource::open(FileConfig::new(&path).checkpoint(&path))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid source.checkpoint: must not be the file it records"
    );
    let error = FileSource::open(FileConfig::new(dir.0.join("missing.txt")))
        .await
        .unwrap_err();
    assert!(error.to_string().starts_with("opening "), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gauges_are_exactly_those_documented_and_fall_to_zero() {
    let dir = Dir::new("metrics");
    let path = dir.file("records.txt", "one\ntwo\nthree\n");
    let config = FileConfig::new(&path);
    let source = FileSource::open(config).await.unwrap();
    let pipeline = Pipeline::builder(source, Ok_).start().unwrap();
    pipeline.wait().await.unwrap();
    let label = path.display().to_string();
    let families = longshore::metrics::registry().gather();
    let value = |name: &str| {
        families
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .find(|metric| metric.get_label().iter().any(|l| l.value() == label))
            .map(|metric| metric.get_gauge().get_value())
    };
    assert_eq!(value("longshore_file_lag_bytes"), Some(0.0));
    assert_eq!(value("longshore_file_checkpoint_line"), Some(4.0));
    assert_eq!(documented::assert_exactly_documented("longshore_file_"), 2);
    // The dashboard's panels of this source show it, through a real Prometheus.
    prometheus::assert_panels_show("longshore_file_", 1).await;
}

/// Runs a CSV file through a pipeline decoding rows by the header: (line, row) in order.
async fn import(config: FileConfig) -> Result<Vec<(u64, Row)>, PipelineError> {
    let collected: &'static Collect = Box::leak(Box::default());
    let source = FileSource::open(config).await.unwrap();
    let pipeline = Pipeline::builder(source, collected)
        .decode(Csv::new())
        .processors(Processors::new(1))
        .start()
        .unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(20), pipeline.wait())
        .await
        .expect("the pipeline ends")?;
    let mut rows = std::mem::take(&mut *collected.0.lock().unwrap());
    assert_eq!(summary.successful, rows.len() as u64, "{summary:?}");
    rows.sort_by_key(|(line, _)| *line);
    Ok(rows)
}

fn row(id: u64, note: &str) -> Row {
    Row {
        id,
        note: note.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_records_end_where_the_csv_crate_ends_them() {
    let dir = Dir::new("csv-ends");
    // A quote inside an unquoted field is text: two rows, not one.
    let path = dir.file("inches.csv", "id,note\n1,5\" tv\n2,7\" tv\n");
    let rows = import(FileConfig::new(&path).format(Format::Csv)).await.unwrap();
    assert_eq!(rows, [(2, row(1, "5\" tv")), (3, row(2, "7\" tv"))]);
    // Old Mac line endings: a lone CR ends a record.
    let path = dir.file("mac.csv", "id,note\r1,a\r2,b\r");
    let rows = import(FileConfig::new(&path).format(Format::Csv)).await.unwrap();
    assert_eq!(rows, [(2, row(1, "a")), (3, row(2, "b"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_header_that_does_not_parse_stops_the_pipeline_before_any_row() {
    let dir = Dir::new("csv-header");
    let path = dir.0.join("latin1.csv");
    std::fs::write(&path, b"id,A\xf1o\n1,x\n").unwrap();
    let config = FileConfig::new(&path).format(Format::Csv);
    let error = import(config.clone()).await.unwrap_err().to_string();
    assert!(
        error.contains("the CSV header at line 1 does not parse"),
        "{error}"
    );
    // Nothing was passed: the checkpoint is still at the start.
    assert_eq!(checkpoint_offset(&config), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_refused_on_another_file_or_by_a_second_source() {
    let dir = Dir::new("identity");
    let path = dir.file("records.txt", "aaaa\nbbbb\ncccc\n");
    let config = FileConfig::new(&path);
    {
        let source = FileSource::open(config.clone()).await.unwrap();
        // A second source on the same checkpoint, while the first lives.
        let error = FileSource::open(config.clone()).await.unwrap_err().to_string();
        assert!(error.contains("another source reads with it"), "{error}");
        let records = next(&source, 1).await;
        finish(&source, records).await;
    }
    assert_eq!(checkpoint_offset(&config), 5);
    // Replaced by a file of the same shape, lines where they were: refused all the same.
    std::fs::write(&path, "xxxx\nyyyy\nzzzz\n").unwrap();
    let error = FileSource::open(config.clone()).await.unwrap_err().to_string();
    assert!(error.contains("are not those it recorded"), "{error}");
    // The checkpoint named as the file itself, spelled another way.
    let spelled = dir.0.join(".").join("records.txt");
    let error = FileSource::open(FileConfig::new(&path).checkpoint(spelled))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid source.checkpoint: must not be the file it records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_file_cut_short_stops_the_pipeline_saying_so() {
    let dir = Dir::new("cut-followed");
    let path = dir.file("app.log", "one\ntwo\n");
    let config = FileConfig::new(&path)
        .follow(true)
        .poll_interval(Duration::from_millis(10));
    let source = FileSource::open(config.clone()).await.unwrap();
    let pipeline = Pipeline::builder(source, Ok_).start().unwrap();
    let stats = pipeline.stats();
    while stats.get().successful < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A copytruncate rotation.
    std::fs::write(&path, "").unwrap();
    let error = tokio::time::timeout(Duration::from_secs(20), pipeline.wait())
        .await
        .expect("the pipeline stops")
        .unwrap_err()
        .to_string();
    assert!(error.contains("cut short"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_under_its_name_while_read_is_refused_at_the_next_start() {
    let dir = Dir::new("replaced-while-read");
    let path = dir.file("export.txt", "aaaa\nbbbb\ncccc\n");
    let config = FileConfig::new(&path);
    {
        let source = FileSource::open(config.clone()).await.unwrap();
        let records = next(&source, 1).await;
        // A new export takes the name (written aside, renamed over), lines where the old
        // one's were, while the old one is still read.
        let aside = dir.file("export.txt.new", "1111\n2222\n3333\n4444\n");
        std::fs::rename(&aside, &path).unwrap();
        finish(&source, records).await;
    }
    assert_eq!(checkpoint_offset(&config), 5);
    // The checkpoint is the old file's: read in the new one from byte 5, "1111" would be
    // lost.
    let error = FileSource::open(config.clone()).await.unwrap_err().to_string();
    assert!(error.contains("are not those it recorded"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_a_carriage_return_and_its_line_feed_keeps_the_line_numbers() {
    let dir = Dir::new("crlf-restart");
    let path = dir.file("rows.csv", "1,a\r\n2,b\r\n3,c\r\n");
    let config = FileConfig::new(&path).format(Format::Csv).headers(false);
    let lines = |records: &[FileMessage]| records.iter().map(|r| r.metadata().line()).collect::<Vec<_>>();
    {
        let source = FileSource::open(config.clone()).await.unwrap();
        let records = next(&source, 1).await;
        assert_eq!(lines(&records), [1]);
        finish(&source, records).await;
    }
    // A CSV record ends at its `\r`: the checkpoint sits before the `\n`.
    assert_eq!(checkpoint_offset(&config), 4);
    let source = FileSource::open(config.clone()).await.unwrap();
    assert_eq!(
        lines(&next(&source, 2).await),
        [2, 3],
        "line numbers after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_while_read_stops_the_source_saying_so() {
    let dir = Dir::new("rewritten-in-place");
    // Lines of 100 bytes, enough for several blocks of reading.
    let lines = |tag: char| -> String { (0..8_000).map(|n| format!("{tag}{n:098}\n")).collect() };
    let path = dir.file("export.txt", &lines('a'));
    let source = FileSource::open(FileConfig::new(&path)).await.unwrap();
    let first = next(&source, 100).await;
    assert!(first[0].data().starts_with(b"a"));
    // Rewritten under the same file (truncated, then written: `cp`, `>`), other data.
    std::fs::write(&path, lines('b')).unwrap();
    let mut read = first.len();
    let error = loop {
        match source.receive(NonZeroUsize::new(1_000).unwrap()).await {
            Ok(Some(records)) => {
                assert!(
                    records.iter().all(|r| r.data().starts_with(b"a")),
                    "read on into the rewritten data after {read} records"
                );
                read += records.len();
                finish(&source, records).await;
            }
            Ok(None) => panic!("read to the end ({read} records) without noticing the rewrite"),
            Err(error) => break error.to_string(),
        }
    };
    assert!(error.contains("no longer those read"), "{error}");
}
