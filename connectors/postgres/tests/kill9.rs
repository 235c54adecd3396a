//! Against a real PostgreSQL: a consumer process killed with `kill -9` again and again
//! mid-queue, then run to the end; the server itself crashed and restarted mid-run; and
//! SIGTERM under a slow sink. Counted once the table holds no row of the queue: nothing
//! lost, duplicates within what the consumer held.

#[path = "../../../test-support/chaos.rs"]
mod chaos;
mod common;

use std::path::Path;
use std::time::Duration;

use chaos::{
    kill_restart_and_count, lines, setting, sigterm_then_finish, start_consumer, wait_for, Case, Consumer,
};
use common::{client, enqueue, rows, server, Postgres};

fn consumer(server: &Postgres, queue: &str, output: &Path, envs: &[(&str, &str)]) -> Consumer {
    let url = server.url();
    let args = [url.as_str(), queue, output.to_str().unwrap()];
    start_consumer(env!("CARGO_BIN_EXE_postgres-count-consumer"), &args, envs, output)
}

/// Whether the queue has no row left, asked from the chaos support's blocking wait.
fn drained<'a>(client: &'a tokio_postgres_client::Client, queue: &'a str) -> impl FnMut() -> bool + 'a {
    move || {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(rows(client, queue)))
            == (0, 0)
    }
}

use longshore_postgres::tokio_postgres as tokio_postgres_client;

async fn produce(client: &tokio_postgres_client::Client, queue: &str, count: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(10_000) {
        enqueue(
            client,
            queue,
            chunk.iter().map(|n| n.to_string().into_bytes()).collect(),
        )
        .await;
    }
}

/// The kill and server-restart cases run two receives at once: fetches side by side are
/// what a kill cuts short most often.
const TWO_PRODUCERS: (&str, &str) = ("LONGSHORE_CHAOS_PRODUCERS", "2");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_queue_then_restart_loses_nothing() {
    let (produced, kills) = (
        setting("LONGSHORE_CHAOS_POSTGRES_ROWS", 20_000),
        setting("LONGSHORE_CHAOS_POSTGRES_KILLS", 3),
    );
    let server = server().await;
    let client = client(&server.url()).await;
    produce(&client, "kill9", produced).await;
    let case = Case::new("postgres", "kill9");
    let counted = kill_restart_and_count(produced, kills, &case.output, drained(&client, "kill9"), || {
        consumer(
            &server,
            "kill9",
            &case.output,
            &[("LONGSHORE_CHAOS_SINK_MS", "1"), TWO_PRODUCERS],
        )
    });
    // What a killed consumer held (at most its in-flight bound) comes back after its
    // lease and is handled again; a row handled and deleted is not.
    counted.assert_kills("postgres-kill9", produced, kills);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_crashed_and_restarted_mid_run_loses_nothing() {
    let produced = setting("LONGSHORE_CHAOS_POSTGRES_ROWS", 20_000);
    let server = server().await;
    let client = client(&server.url()).await;
    produce(&client, "restart", produced).await;
    let case = Case::new("postgres", "restart");
    let mut running = consumer(
        &server,
        "restart",
        &case.output,
        &[("LONGSHORE_CHAOS_SINK_MS", "1"), TWO_PRODUCERS],
    );
    wait_for(Duration::from_secs(120), "consumer progress", || {
        lines(&case.output) >= produced / 3
    });
    let left =
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(rows(&client, "restart")));
    assert!(left.0 > 0, "rows were left when the server crashed: {left:?}");
    // Down for 3 s, longer than the 2 s lease: the leases lapse while it is away.
    server.crash_and_restart(Duration::from_secs(3));
    let client = client_again(&server).await;
    wait_for(
        Duration::from_secs(120),
        "every row done",
        drained(&client, "restart"),
    );
    let counted = chaos::stop_and_count(&mut running, produced, &case.output);
    let (bound, lost, duplicates) = (counted.max_in_flight, counted.lost, counted.duplicates);
    println!(
        "CHAOS case=postgres-server-restart produced={produced} handled_unique={} lost={lost} duplicates={duplicates} inflight_bound={bound}",
        counted.unique
    );
    assert_eq!(lost, 0, "rows lost");
    // A crash loses the deletes not yet committed: at most what the consumer held.
    assert!(
        duplicates <= bound,
        "duplicates {duplicates} over the bound {bound}"
    );
}

/// A client after the server restarted (the first one's connection is gone).
async fn client_again(server: &Postgres) -> tokio_postgres_client::Client {
    client(&server.url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_within_the_deadline_and_loses_nothing() {
    let produced = (setting("LONGSHORE_CHAOS_POSTGRES_ROWS", 20_000) / 5).max(2_000);
    let server = server().await;
    let client = client(&server.url()).await;
    produce(&client, "sigterm", produced).await;
    let case = Case::new("postgres", "sigterm");
    let (took, counted) = sigterm_then_finish(
        produced,
        produced / 3,
        Duration::from_secs(12),
        &case.output,
        drained(&client, "sigterm"),
        || {
            consumer(
                &server,
                "sigterm",
                &case.output,
                &[("LONGSHORE_CHAOS_SINK_MS", "20")],
            )
        },
    );
    // A graceful stop deletes all it finished and releases the rest: nothing twice.
    counted.assert_graceful("postgres-sigterm-under-load", produced, took);
}
