//! kill -9 of the consumer process mid-stream, then restart, against a real broker
//! process (tansu, or librdkafka's mock cluster hosted in a process, over TCP): nothing
//! lost, duplicates within the in-flight bound; and SIGTERM under load.

#[path = "../../../test-support/chaos.rs"]
mod chaos;
mod common;

use std::time::Duration;

use chaos::{kill_restart_and_count, setting, sigterm_then_finish, start_consumer};

use common::tansu::{create_topic, Tansu};
use common::{committed, produce_with, MockBroker, Watchdog, TEST_LIMIT};

const TOPIC: &str = "chaos";
const PARTITIONS: i32 = 4;

/// Records acknowledged but not yet covered by a confirmed commit when a kill comes:
/// the 20 ms commit interval and the commit's round trip, at up to about 600,000 msg/s.
const UNCOMMITTED_BOUND: usize = 25_000;

#[test]
fn kill_9_mid_stream_then_restart_loses_nothing() {
    let records = setting("LONGSHORE_CHAOS_TANSU_RECORDS", 20_000);
    // A minute more per 100,000 records than the test command's run.
    let _watchdog = Watchdog::arm(TEST_LIMIT + Duration::from_secs(60 * (records / 100_000) as u64));
    let broker = Tansu::start();
    create_topic(&broker.bootstrap, TOPIC, PARTITIONS);
    // One record per batch: tansu 0.6 does not serve a fetch that starts inside a record
    // batch, as consumers do after a commit or a pause (real Kafka does).
    produce_with(&broker.bootstrap, TOPIC, PARTITIONS, records, 100, 1);
    kill_9_run("kafka-kill9-tansu", &broker.bootstrap, PARTITIONS, records);
}

/// The same against librdkafka's mock cluster in a process of its own: the full-size run
/// (tansu's in-memory storage stops serving early offsets past about a million records).
#[test]
fn kill_9_at_scale_against_a_mock_cluster_process_loses_nothing() {
    let records = setting("LONGSHORE_CHAOS_RECORDS", 20_000);
    let _watchdog = Watchdog::arm(TEST_LIMIT + Duration::from_secs(60 * (records / 100_000) as u64));
    // It keeps the last 5 MiB of a partition: 40 partitions hold a million small records.
    let partitions = 40;
    let broker = MockBroker::start(TOPIC, partitions);
    produce_with(&broker.bootstrap, TOPIC, partitions, records, 100, 10_000);
    kill_9_run("kafka-kill9-mock", &broker.bootstrap, partitions, records);
}

/// Kills `LONGSHORE_CHAOS_KILLS` consumer processes of `produced` records at random
/// moments, restarts, and counts.
fn kill_9_run(case: &str, bootstrap: &str, partitions: i32, produced: usize) {
    let kills = setting("LONGSHORE_CHAOS_KILLS", 3);
    let dir = std::env::temp_dir().join(format!("longshore-{case}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("handled.txt");
    let _ = std::fs::remove_file(&output);

    let done = || {
        committed(bootstrap, "chaos-group", TOPIC, partitions)
            .iter()
            .sum::<i64>() as usize
            == produced
    };
    let counted = kill_restart_and_count(produced, kills, &output, done, || {
        let args = [bootstrap, TOPIC, "chaos-group", output.to_str().unwrap()];
        start_consumer(env!("CARGO_BIN_EXE_count-consumer"), &args, &[], &output)
    });
    // A kill replays what was in flight plus what was acknowledged since the last
    // confirmed commit.
    counted.assert_kills_within(case, produced, kills, counted.max_in_flight + UNCOMMITTED_BOUND);
    // After the graceful stop everything is committed.
    let ends: i64 = committed(bootstrap, "chaos-group", TOPIC, partitions)
        .iter()
        .sum();
    assert_eq!(ends as usize, produced);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_under_load_exits_within_the_deadline_and_loses_nothing() {
    let produced = (setting("LONGSHORE_CHAOS_RECORDS", 20_000) / 20).max(5_000);
    let _watchdog = Watchdog::arm(TEST_LIMIT + Duration::from_secs(60 * (produced / 100_000) as u64));
    let broker = Tansu::start();
    create_topic(&broker.bootstrap, TOPIC, PARTITIONS);
    produce_with(&broker.bootstrap, TOPIC, PARTITIONS, produced, 100, 1);
    let dir = std::env::temp_dir().join(format!("longshore-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("handled.txt");
    let _ = std::fs::remove_file(&output);

    // A slow sink: the pipeline is full when SIGTERM comes. The consumer's deadline is
    // 10 s, its close a moment more.
    let deadline = Duration::from_secs(15);
    let done = || {
        committed(&broker.bootstrap, "sigterm-group", TOPIC, PARTITIONS)
            .iter()
            .sum::<i64>() as usize
            == produced
    };
    let (took, counted) = sigterm_then_finish(produced, produced / 3, deadline, &output, done, || {
        let args = [
            broker.bootstrap.as_str(),
            TOPIC,
            "sigterm-group",
            output.to_str().unwrap(),
        ];
        let envs = [("LONGSHORE_CHAOS_SINK_MS", "20")];
        start_consumer(env!("CARGO_BIN_EXE_count-consumer"), &args, &envs, &output)
    });
    println!(
        "CHAOS case=kafka-sigterm-under-load produced={produced} handled_unique={} lost={} duplicates={} \
         inflight_bound={} exit_s={:.2}",
        counted.unique,
        counted.lost,
        counted.duplicates,
        counted.max_in_flight,
        took.as_secs_f64()
    );
    assert_eq!(counted.lost, 0, "records lost");
    // Everything handled before the SIGTERM was committed at shutdown.
    assert!(counted.duplicates <= counted.max_in_flight);
    let _ = std::fs::remove_dir_all(&dir);
}
