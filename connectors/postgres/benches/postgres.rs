//! The queue table source against a raw tokio-postgres loop on the same server, in the
//! same run, each in a process of its own, in alternated rounds (median ratio):
//!
//! - `raw`: two tasks, each on its connection leasing 64 rows at a time with the
//!   source's own statement (`FOR UPDATE SKIP LOCKED`) and deleting them in one
//!   statement sent with its next lease, until the queue is empty: the hand-written
//!   consumer, as tight as we could make it;
//! - `longshore`: `PgQueueSource` under two producers (`source_concurrency` 2, two
//!   leases in flight like the raw side's) and two processors of `max_demand` 64, a
//!   do-nothing handler, rows deleted per acknowledged chunk.
//!
//! Each round fills the queue first (not timed). Prints `BENCH case=postgres ratio=<x>
//! ...` with peak RSS; `LONGSHORE_BENCH_MESSAGES` sets the row count (default 50,000;
//! under `cargo test` a short smoke run).

#[path = "../../../test-support/postgres.rs"]
mod postgres;
#[path = "../../../benches/support/mod.rs"]
mod support;

use std::time::Instant;

use longshore_postgres::tokio_postgres::{Client, NoTls};
use longshore_postgres::{PgQueueConfig, PgQueueSource};

const BATCH: i64 = 64;
const TASKS: usize = 2;

async fn connect(url: &str) -> Client {
    let (client, connection) = longshore_postgres::tokio_postgres::connect(url, NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn fill(url: &str, rows: u64) {
    let client = connect(url).await;
    client
        .execute(
            "INSERT INTO longshore_queue (queue, payload) SELECT 'bench', convert_to(lpad(n::text, 100, 'x'), 'UTF8') FROM generate_series(1::bigint, $1) AS n",
            &[&(rows as i64)],
        )
        .await
        .unwrap();
    client
        .execute("VACUUM ANALYZE longshore_queue", &[])
        .await
        .unwrap();
}

async fn raw(url: &str) -> u64 {
    let lease = "WITH next AS (SELECT id FROM longshore_queue WHERE queue = $1 AND failed_at IS NULL AND visible_at <= now() \
                   ORDER BY visible_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE longshore_queue q SET visible_at = now() + make_interval(secs => 30), attempts = q.attempts + 1 \
                 FROM next WHERE q.id = next.id RETURNING q.id, q.payload";
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let client = connect(&url).await;
                let (lease, delete) = (
                    client.prepare(lease).await.unwrap(),
                    client
                        .prepare("DELETE FROM longshore_queue WHERE id = ANY($1)")
                        .await
                        .unwrap(),
                );
                let mut done = 0;
                let mut ids: Vec<i64> = Vec::new();
                loop {
                    // The last lease's delete is sent with the next lease: one round trip.
                    let (deleted, rows) = tokio::join!(
                        async {
                            if !ids.is_empty() {
                                client.execute(&delete, &[&ids]).await.unwrap();
                            }
                            ids.len() as u64
                        },
                        client.query(&lease, &[&"bench", &BATCH])
                    );
                    done += deleted;
                    let rows = rows.unwrap();
                    if rows.is_empty() {
                        return done;
                    }
                    ids = rows
                        .iter()
                        .map(|row| {
                            std::hint::black_box(row.get::<_, &[u8]>(1).len());
                            row.get(0)
                        })
                        .collect();
                }
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.unwrap();
    }
    done
}

async fn longshore(url: &str, rows: u64) -> u64 {
    let config = PgQueueConfig::new(url).queue("bench");
    let source = PgQueueSource::connect(config).await.unwrap();
    support::consume(source, rows, TASKS, BATCH as usize, TASKS).await
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let (case, url, rows) = (&args[i + 1], &args[i + 2], args[i + 3].parse::<u64>().unwrap());
        let runtime = support::runtime();
        let (rate, done) = runtime.block_on(async {
            fill(url, rows).await;
            let started = Instant::now();
            let done = match case.as_str() {
                "raw" => raw(url).await,
                _ => longshore(url, rows).await,
            };
            (rows as f64 / started.elapsed().as_secs_f64(), done)
        });
        assert_eq!(done, rows, "{case}: every row");
        support::report(&[rate, support::peak_rss_mb()]);
        return;
    }
    let (rows, rounds) = support::size(&args, 50_000);
    let server = postgres::Postgres::start();
    let url = server.url();
    support::runtime().block_on(async {
        PgQueueSource::migrate(&PgQueueConfig::new(url.as_str()))
            .await
            .unwrap();
    });
    support::raw_against_longshore("postgres", &url, rows, rounds);
}
