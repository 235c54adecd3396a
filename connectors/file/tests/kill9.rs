//! kill -9 of a consumer process mid-file, again and again, then run to the end: nothing
//! lost, and each kill makes at most `max_unrecorded` records handled twice (the source
//! reads no further past its checkpoint). And SIGTERM under a slow sink: out within the
//! deadline, nothing lost.

#[path = "../../../test-support/chaos.rs"]
mod chaos;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use chaos::{kill_restart_and_count, setting, sigterm_then_finish, start_consumer, Case, Consumer};

/// The consumer's `max_unrecorded` (tests/support/count_consumer.rs).
const MAX_UNRECORDED: usize = 500;

/// A case's folder, with an input file of `records` ids.
struct Input {
    case: Case,
    input: PathBuf,
}

impl Input {
    fn new(name: &str, records: usize) -> Self {
        let case = Case::new("file", name);
        let input = case.dir.join("input.txt");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for id in 0..records {
            writeln!(file, "{id}").unwrap();
        }
        file.flush().unwrap();
        Input { case, input }
    }

    /// Whether the checkpoint is at the input's end: every record acknowledged.
    fn all_recorded(&self) -> bool {
        let length = std::fs::metadata(&self.input).unwrap().len();
        let checkpoint = longshore_file::FileConfig::new(&self.input).checkpoint_path();
        std::fs::read_to_string(checkpoint)
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("offset "))
            .is_some_and(|offset| offset.parse::<u64>().ok() == Some(length))
    }

    fn consumer(&self, envs: &[(&str, &str)]) -> Consumer {
        let output = &self.case.output;
        let args = [self.input.to_str().unwrap(), output.to_str().unwrap(), "follow"];
        start_consumer(env!("CARGO_BIN_EXE_file-count-consumer"), &args, envs, output)
    }
}

#[test]
fn kill_9_mid_file_then_restart_loses_nothing() {
    let (produced, kills) = (
        setting("LONGSHORE_CHAOS_FILE_RECORDS", 50_000),
        setting("LONGSHORE_CHAOS_FILE_KILLS", 5),
    );
    let case = Input::new("kill9", produced);
    // A sink of 1 ms a batch: kills land with the pipeline full.
    let counted = kill_restart_and_count(
        produced,
        kills,
        &case.case.output,
        || case.all_recorded(),
        || case.consumer(&[("LONGSHORE_CHAOS_SINK_MS", "1")]),
    );
    let (unique, lost, duplicates) = (counted.unique, counted.lost, counted.duplicates);
    println!(
        "CHAOS case=file-kill9 produced={produced} handled_unique={unique} lost={lost} \
         duplicates={duplicates} inflight_bound={MAX_UNRECORDED} kills={kills}"
    );
    assert_eq!(lost, 0, "records lost");
    assert_eq!(unique, produced);
    assert!(
        duplicates <= kills * MAX_UNRECORDED,
        "duplicates {duplicates} over the bound {kills} × {MAX_UNRECORDED}"
    );
}

#[test]
fn sigterm_under_load_exits_within_the_deadline_and_loses_nothing() {
    let produced = setting("LONGSHORE_CHAOS_FILE_RECORDS", 50_000) / 5;
    let case = Input::new("sigterm", produced);
    let (took, counted) = sigterm_then_finish(
        produced,
        produced / 3,
        Duration::from_secs(12),
        &case.case.output,
        || case.all_recorded(),
        || case.consumer(&[("LONGSHORE_CHAOS_SINK_MS", "20")]),
    );
    println!(
        "CHAOS case=file-sigterm-under-load produced={produced} handled_unique={} lost={} duplicates={} \
         inflight_bound={MAX_UNRECORDED} exit_s={:.2}",
        counted.unique,
        counted.lost,
        counted.duplicates,
        took.as_secs_f64()
    );
    assert_eq!(counted.lost, 0, "records lost");
    // A graceful stop records all it finished: nothing comes twice.
    assert_eq!(counted.duplicates, 0, "duplicates after a graceful stop");
}
