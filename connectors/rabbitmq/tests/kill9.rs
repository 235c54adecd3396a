//! Against a real RabbitMQ server: a consumer process killed with `kill -9` again and
//! again mid-stream, then run to the end; the server itself killed and restarted mid-run
//! (a durable queue of persistent messages); and SIGTERM under a slow sink. Counted once
//! the queue holds nothing ready or unacknowledged: nothing lost; duplicates within what
//! the consumer held (its prefetch, the pipeline's in-flight bound) at each kill.

#[path = "../../../test-support/chaos.rs"]
mod chaos;
mod common;

use std::path::Path;
use std::time::Duration;

use chaos::{
    kill_restart_and_count, lines, setting, sigterm_then_finish, start_consumer, wait_for, Case, Consumer,
};
use common::{channel, declare, publish, RabbitMq};
use longshore_rabbitmq::lapin::types::FieldTable;

fn consumer(url: &str, queue: &str, output: &Path, envs: &[(&str, &str)]) -> Consumer {
    let args = [url, queue, output.to_str().unwrap()];
    start_consumer(env!("CARGO_BIN_EXE_rabbitmq-count-consumer"), &args, envs, output)
}

/// Whether the server holds nothing of `queue` ready or unacknowledged.
fn drained<'a>(server: &'a RabbitMq, queue: &'a str) -> impl FnMut() -> bool + 'a {
    move || server.counts(queue) == Some((0, 0))
}

async fn produce(server: &RabbitMq, queue: &str, count: usize) {
    let (_connection, channel) = channel(&server.url()).await;
    declare(&channel, queue, FieldTable::default()).await;
    publish(&channel, queue, (0..count).map(|n| n.to_string())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let (produced, kills) = (
        setting("LONGSHORE_CHAOS_RABBITMQ_MESSAGES", 20_000),
        setting("LONGSHORE_CHAOS_RABBITMQ_KILLS", 3),
    );
    let server = RabbitMq::start();
    produce(&server, "kill9", produced).await;
    let case = Case::new("rabbitmq", "kill9");
    let url = server.url();
    let counted = tokio::task::block_in_place(|| {
        kill_restart_and_count(produced, kills, &case.output, drained(&server, "kill9"), || {
            consumer(&url, "kill9", &case.output, &[("LONGSHORE_CHAOS_SINK_MS", "1")])
        })
    });
    // What a killed consumer held (its prefetch: the in-flight bound) is requeued when
    // its connection drops; a message acknowledged is not.
    counted.assert_kills("rabbitmq-kill9", produced, kills);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_killed_and_restarted_mid_run_loses_nothing() {
    let produced = setting("LONGSHORE_CHAOS_RABBITMQ_MESSAGES", 20_000);
    let mut server = RabbitMq::start();
    produce(&server, "restart", produced).await;
    let case = Case::new("rabbitmq", "restart");
    let url = server.url();
    // A sink of 10 ms a batch of 50 (about 5,000 messages a second): most of the queue
    // is still to come when the server is killed.
    let mut running = consumer(
        &url,
        "restart",
        &case.output,
        &[("LONGSHORE_CHAOS_SINK_MS", "10")],
    );
    let (handled_before, held_after) = tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(120), "consumer progress", || {
            lines(&case.output) >= produced / 3
        });
        // Killed at once, mid-run: messages not yet handled are not acknowledged, so the
        // server holds some still. (Counting them with `rabbitmqctl` first took a second
        // or more, in which the consumer could finish the queue.)
        assert!(
            lines(&case.output) < produced,
            "the run was over before the server was killed"
        );
        // Down for 3 s: the consumer connects again once it is back.
        server.crash_and_restart(Duration::from_secs(3));
        let handled_before = lines(&case.output);
        // What the server holds once back: every message not acknowledged before the
        // crash, and those acknowledged that it had not yet written down. The server
        // answers before it has recovered its queues: it lists this one a moment later.
        // Recovering a store after a kill takes longer on a loaded machine: a CI run
        // once waited over 60 s. Past the deadline, the server's log says why.
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        let (ready, unacknowledged) = loop {
            if let Some(counts) = server.counts("restart") {
                break counts;
            }
            if std::time::Instant::now() > deadline {
                let log = server.log();
                let from = log.len().saturating_sub(6_000);
                let tail = &log[log.ceil_char_boundary(from)..];
                panic!("the restarted server did not list the queue within 180 s; its log ends:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        wait_for(
            Duration::from_secs(180),
            "every message done",
            drained(&server, "restart"),
        );
        (handled_before, ready + unacknowledged)
    });
    let counted = chaos::stop_and_count(&mut running, produced, &case.output);
    let (bound, lost, duplicates) = (counted.max_in_flight, counted.lost, counted.duplicates);
    println!(
        "CHAOS case=rabbitmq-server-restart produced={produced} handled_unique={} lost={lost} duplicates={duplicates} inflight_bound={bound} handled_before_crash={handled_before} held_after_restart={held_after}",
        counted.unique
    );
    assert_eq!(lost, 0, "messages lost");
    // A killed RabbitMQ forgets the acknowledgements it had not written to disk (it
    // writes its queue index on a timer, and here had written none: it comes back with
    // every message). Only what was handled before the crash may come twice: after it,
    // the consumer connected once and handled each message once.
    assert!(
        duplicates <= handled_before,
        "duplicates {duplicates} over the {handled_before} handled before the crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_within_the_deadline_and_loses_nothing() {
    let produced = (setting("LONGSHORE_CHAOS_RABBITMQ_MESSAGES", 20_000) / 5).max(2_000);
    let server = RabbitMq::start();
    produce(&server, "sigterm", produced).await;
    let case = Case::new("rabbitmq", "sigterm");
    let url = server.url();
    let (took, counted) = tokio::task::block_in_place(|| {
        sigterm_then_finish(
            produced,
            produced / 3,
            Duration::from_secs(12),
            &case.output,
            drained(&server, "sigterm"),
            || {
                consumer(
                    &url,
                    "sigterm",
                    &case.output,
                    &[("LONGSHORE_CHAOS_SINK_MS", "20")],
                )
            },
        )
    });
    counted.assert_graceful("rabbitmq-sigterm-under-load", produced, took);
}
