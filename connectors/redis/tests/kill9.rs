//! Against a real Redis: a consumer process killed with `kill -9` again and again
//! mid-stream, then run to the end; the server itself killed and restarted mid-run (its
//! append-only file synced on every write); and SIGTERM under a slow sink. Counted once
//! the group has every entry delivered and acknowledged: nothing lost, duplicates within
//! what the consumer held.

#[path = "../../../test-support/chaos.rs"]
mod chaos;
mod common;

use std::path::Path;
use std::time::Duration;

use chaos::{
    kill_restart_and_count, lines, setting, sigterm_then_finish, start_consumer, wait_for, Case, Consumer,
};
use common::{add, connection, unfinished, Redis};
use longshore_redis::redis::aio::MultiplexedConnection;

const GROUP: &str = "chaos";

fn consumer(url: &str, stream: &str, output: &Path, envs: &[(&str, &str)]) -> Consumer {
    let args = [url, stream, GROUP, output.to_str().unwrap()];
    start_consumer(env!("CARGO_BIN_EXE_redis-count-consumer"), &args, envs, output)
}

/// Whether the group has every entry of `stream` delivered and acknowledged, asked from
/// the chaos support's blocking wait.
fn drained(url: String, stream: &str) -> impl FnMut() -> bool + '_ {
    move || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let mut connection = connection(&url).await;
                unfinished(&mut connection, stream, GROUP).await == 0
            })
        })
    }
}

/// Entries of `stream` delivered to the group and not yet acknowledged.
async fn pending(connection: &mut MultiplexedConnection, stream: &str) -> i64 {
    let reply: longshore_redis::redis::Value = longshore_redis::redis::cmd("XPENDING")
        .arg(stream)
        .arg(GROUP)
        .query_async(connection)
        .await
        .unwrap();
    match reply {
        longshore_redis::redis::Value::Array(items) => match items.first() {
            Some(longshore_redis::redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

async fn produce(connection: &mut MultiplexedConnection, stream: &str, count: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(5_000) {
        add(connection, stream, chunk.iter().map(|n| n.to_string())).await;
    }
}

/// The kill and server-restart cases run two receives at once: fetches side by side are
/// what a kill cuts short most often.
const TWO_PRODUCERS: (&str, &str) = ("LONGSHORE_CHAOS_PRODUCERS", "2");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let (produced, kills) = (
        setting("LONGSHORE_CHAOS_REDIS_ENTRIES", 20_000),
        setting("LONGSHORE_CHAOS_REDIS_KILLS", 3),
    );
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    produce(&mut db, "kill9", produced).await;
    let case = Case::new("redis", "kill9");
    let url = server.url();
    let counted = kill_restart_and_count(
        produced,
        kills,
        &case.output,
        drained(url.clone(), "kill9"),
        || {
            consumer(
                &url,
                "kill9",
                &case.output,
                &[("LONGSHORE_CHAOS_SINK_MS", "1"), TWO_PRODUCERS],
            )
        },
    );
    // What a killed consumer held is taken back when it starts again and handled again:
    // at most what was in flight, and as many acknowledged whose XACK had not yet reached
    // the server (queued to go with a read).
    counted.assert_kills_within("redis-kill9", produced, kills, 2 * counted.max_in_flight);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_killed_and_restarted_mid_run_loses_nothing() {
    let produced = setting("LONGSHORE_CHAOS_REDIS_ENTRIES", 20_000);
    let mut server = Redis::start();
    let mut db = connection(&server.url()).await;
    produce(&mut db, "restart", produced).await;
    let case = Case::new("redis", "restart");
    let url = server.url();
    let mut running = consumer(
        &url,
        "restart",
        &case.output,
        &[("LONGSHORE_CHAOS_SINK_MS", "1"), TWO_PRODUCERS],
    );
    wait_for(Duration::from_secs(120), "consumer progress", || {
        lines(&case.output) >= produced / 3
    });
    let held = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(pending(&mut db, "restart"))
    });
    assert!(held > 0, "the consumer held entries when the server was killed");
    // Down for 3 s.
    server.crash_and_restart(Duration::from_secs(3));
    wait_for(
        Duration::from_secs(120),
        "every entry done",
        drained(url.clone(), "restart"),
    );
    let counted = chaos::stop_and_count(&mut running, produced, &case.output);
    let (bound, lost, duplicates) = (2 * counted.max_in_flight, counted.lost, counted.duplicates);
    println!(
        "CHAOS case=redis-server-restart produced={produced} handled_unique={} lost={lost} duplicates={duplicates} inflight_bound={bound}",
        counted.unique
    );
    assert_eq!(lost, 0, "entries lost");
    assert!(
        duplicates <= bound,
        "duplicates {duplicates} over the bound {bound}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_within_the_deadline_and_loses_nothing() {
    let produced = (setting("LONGSHORE_CHAOS_REDIS_ENTRIES", 20_000) / 5).max(2_000);
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    produce(&mut db, "sigterm", produced).await;
    let case = Case::new("redis", "sigterm");
    let url = server.url();
    let (took, counted) = sigterm_then_finish(
        produced,
        produced / 3,
        Duration::from_secs(12),
        &case.output,
        drained(url.clone(), "sigterm"),
        || {
            consumer(
                &url,
                "sigterm",
                &case.output,
                &[("LONGSHORE_CHAOS_SINK_MS", "20")],
            )
        },
    );
    counted.assert_graceful("redis-sigterm-under-load", produced, took);
}
