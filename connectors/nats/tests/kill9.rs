//! Against a real NATS server with JetStream: a consumer process killed with `kill -9`
//! again and again mid-stream, then run to the end; the server itself killed and
//! restarted mid-run (file storage); and SIGTERM under a slow sink. Counted once the
//! consumer has every message delivered and acknowledged: nothing lost; duplicates
//! within what the consumer held after its kills (a server crash forgets the acks it had
//! not stored yet: those come again).

#[path = "../../../test-support/chaos.rs"]
mod chaos;
mod common;

use std::path::Path;
use std::time::Duration;

use chaos::{
    kill_restart_and_count, lines, setting, sigterm_then_finish, start_consumer, wait_for, Case, Consumer,
};
use common::{context, make_stream, publish, unfinished, Nats};
use longshore_nats::async_nats::jetstream::Context;

const CONSUMER: &str = "chaos";

fn consumer(url: &str, stream: &str, output: &Path, envs: &[(&str, &str)]) -> Consumer {
    let args = [url, stream, CONSUMER, output.to_str().unwrap()];
    start_consumer(env!("CARGO_BIN_EXE_nats-count-consumer"), &args, envs, output)
}

/// Whether the consumer has every message of `stream` delivered and acknowledged, asked
/// from the chaos support's blocking wait.
fn drained(url: String, stream: &str) -> impl FnMut() -> bool + '_ {
    move || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let context = context(&url).await;
                unfinished(&context, stream, CONSUMER).await == 0
            })
        })
    }
}

/// Messages of `stream` delivered to the consumer and not yet acknowledged.
async fn pending(context: &mut Context, stream: &str) -> i64 {
    match context
        .get_stream(stream)
        .await
        .unwrap()
        .consumer_info(CONSUMER)
        .await
    {
        Ok(info) => info.num_ack_pending as i64,
        Err(_) => 0,
    }
}

async fn produce(context: &mut Context, stream: &str, count: usize) {
    make_stream(context, stream).await;
    publish(context, stream, (0..count).map(|n| n.to_string())).await;
}

/// The kill and server-restart cases run two receives at once: fetches side by side are
/// what a kill cuts short most often.
const TWO_PRODUCERS: (&str, &str) = ("LONGSHORE_CHAOS_PRODUCERS", "2");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let (produced, kills) = (
        setting("LONGSHORE_CHAOS_NATS_MESSAGES", 20_000),
        setting("LONGSHORE_CHAOS_NATS_KILLS", 3),
    );
    let server = Nats::start();
    let mut db = context(&server.url()).await;
    produce(&mut db, "KILL9", produced).await;
    let case = Case::new("nats", "kill9");
    let url = server.url();
    let counted = kill_restart_and_count(
        produced,
        kills,
        &case.output,
        drained(url.clone(), "KILL9"),
        || {
            consumer(
                &url,
                "KILL9",
                &case.output,
                &[("LONGSHORE_CHAOS_SINK_MS", "1"), TWO_PRODUCERS],
            )
        },
    );
    // What a killed consumer held (at most its in-flight bound) is delivered again after
    // ack_wait; a message acknowledged is not.
    counted.assert_kills("nats-kill9", produced, kills);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_killed_and_restarted_mid_run_loses_nothing() {
    let produced = setting("LONGSHORE_CHAOS_NATS_MESSAGES", 20_000);
    let mut server = Nats::start();
    let mut db = context(&server.url()).await;
    produce(&mut db, "RESTART", produced).await;
    let case = Case::new("nats", "restart");
    let url = server.url();
    let mut running = consumer(
        &url,
        "RESTART",
        &case.output,
        &[("LONGSHORE_CHAOS_SINK_MS", "1"), TWO_PRODUCERS],
    );
    wait_for(Duration::from_secs(120), "consumer progress", || {
        lines(&case.output) >= produced / 3
    });
    let held = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(pending(&mut db, "RESTART"))
    });
    assert!(held > 0, "the consumer held messages when the server was killed");
    // Down for 3 s.
    server.crash_and_restart(Duration::from_secs(3));
    wait_for(
        Duration::from_secs(120),
        "every message done",
        drained(url.clone(), "RESTART"),
    );
    let counted = chaos::stop_and_count(&mut running, produced, &case.output);
    let (bound, lost, duplicates) = (counted.max_in_flight, counted.lost, counted.duplicates);
    println!(
        "CHAOS case=nats-server-restart produced={produced} handled_unique={} lost={lost} duplicates={duplicates} inflight_bound={bound}",
        counted.unique
    );
    assert_eq!(lost, 0, "messages lost");
    // No bound of ours on the duplicates here: nats-server keeps a consumer's acks in
    // memory and writes them to its store on a timer, so a killed server forgets the
    // acknowledgements since its last write and delivers those messages again (the
    // CHAOS line reports how many). The consumer's own kills above stay within its bound.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_within_the_deadline_and_loses_nothing() {
    let produced = (setting("LONGSHORE_CHAOS_NATS_MESSAGES", 20_000) / 5).max(2_000);
    let server = Nats::start();
    let mut db = context(&server.url()).await;
    produce(&mut db, "SIGTERM", produced).await;
    let case = Case::new("nats", "sigterm");
    let url = server.url();
    let (took, counted) = sigterm_then_finish(
        produced,
        produced / 3,
        Duration::from_secs(12),
        &case.output,
        drained(url.clone(), "SIGTERM"),
        || {
            consumer(
                &url,
                "SIGTERM",
                &case.output,
                &[("LONGSHORE_CHAOS_SINK_MS", "20")],
            )
        },
    );
    counted.assert_graceful("nats-sigterm-under-load", produced, took);
}
