//! kill -9 of the consumer process mid-stream, then restart, against a real
//! SQS-compatible server (LocalStack over HTTP): nothing lost, duplicates within the
//! in-flight bound. With `LONGSHORE_CHAOS_PANIC_PERCENT`, handlers also panic on that
//! share of first attempts.

#[path = "../../../test-support/chaos.rs"]
mod chaos;
mod common;

use std::time::Duration;

use chaos::{kill_restart_and_count, setting, sigterm_then_finish, start_consumer};
use common::{assert_depth, client, create_queue, send, unique, Watchdog, TEST_LIMIT};

/// The source's bound on deletes handed over and not yet sent (`acknowledge.rs`).
const PENDING_DELETES: usize = 170;

/// Whether the queue is empty with nothing in flight, asked from the blocking wait of
/// the chaos support (a multi-thread runtime's worker may block in place).
fn empty<'a>(client: &'a aws_sdk_sqs::Client, url: &'a str) -> impl FnMut() -> bool + 'a {
    move || {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(common::depth(client, url)))
            == (0, 0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let (produced, kills, panic_percent) = (
        setting("LONGSHORE_CHAOS_SQS_MESSAGES", 3_000),
        setting("LONGSHORE_CHAOS_SQS_KILLS", 3),
        setting("LONGSHORE_CHAOS_PANIC_PERCENT", 10),
    );
    let _watchdog = Watchdog::arm(TEST_LIMIT + Duration::from_secs(60 * (produced / 10_000) as u64));
    let client = client().await;
    let queue = unique("chaos");
    let url = create_queue(&client, &queue, &[]).await;
    send(&client, &url, (0..produced).map(|i| i.to_string()), None).await;
    let dir = std::env::temp_dir().join(format!("longshore-sqs-kill9-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("handled.txt");
    let _ = std::fs::remove_file(&output);

    let counted = kill_restart_and_count(produced, kills, &output, empty(&client, &url), || {
        let percent = panic_percent.to_string();
        let args = [queue.as_str(), output.to_str().unwrap(), percent.as_str()];
        start_consumer(env!("CARGO_BIN_EXE_sqs-count-consumer"), &args, &[], &output)
    });
    let max_in_flight = counted.max_in_flight;
    // Handled and not yet deleted at a kill: what the pipeline held, plus the deletes
    // handed over and not yet sent (at most the source's PENDING_DELETES).
    let in_flight_bound = max_in_flight + PENDING_DELETES;

    let (unique, lost, duplicates) = (counted.unique, counted.lost, counted.duplicates);
    println!(
        "CHAOS case=sqs-kill9-localstack produced={produced} handled_unique={unique} lost={lost} \
         duplicates={duplicates} inflight_bound={in_flight_bound} kills={kills} panic_percent={panic_percent}"
    );
    assert_eq!(lost, 0, "messages lost");
    assert_eq!(unique, produced);
    assert!(
        duplicates <= kills * in_flight_bound,
        "duplicates {duplicates} over the bound {kills} × {in_flight_bound}"
    );
    // After the graceful stop everything is deleted.
    assert_depth(&client, &url, (0, 0)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_within_the_deadline_and_loses_nothing() {
    let produced = (setting("LONGSHORE_CHAOS_SQS_MESSAGES", 3_000) / 5).max(3_000);
    let _watchdog = Watchdog::arm(TEST_LIMIT + Duration::from_secs(60 * (produced / 10_000) as u64));
    let client = client().await;
    let queue = unique("sigterm");
    let url = create_queue(&client, &queue, &[]).await;
    send(&client, &url, (0..produced).map(|i| i.to_string()), None).await;
    let dir = std::env::temp_dir().join(format!("longshore-sqs-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("handled.txt");
    let _ = std::fs::remove_file(&output);

    // A slow sink: the pipeline is full when SIGTERM comes. The consumer's deadline is
    // 10 s; its exit may take a moment more than the drain.
    let deadline = Duration::from_secs(12);
    let (took, counted) = sigterm_then_finish(
        produced,
        produced / 3,
        deadline,
        &output,
        empty(&client, &url),
        || {
            let args = [queue.as_str(), output.to_str().unwrap(), "0"];
            let envs = [("LONGSHORE_CHAOS_SINK_MS", "100")];
            start_consumer(env!("CARGO_BIN_EXE_sqs-count-consumer"), &args, &envs, &output)
        },
    );
    let in_flight_bound = counted.max_in_flight + PENDING_DELETES;
    println!(
        "CHAOS case=sqs-sigterm-under-load produced={produced} handled_unique={} lost={} duplicates={} \
         inflight_bound={in_flight_bound} exit_s={:.2}",
        counted.unique,
        counted.lost,
        counted.duplicates,
        took.as_secs_f64()
    );
    assert_eq!(counted.lost, 0, "messages lost");
    assert!(counted.duplicates <= in_flight_bound);
    assert_depth(&client, &url, (0, 0)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
