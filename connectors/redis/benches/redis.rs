//! The Redis Streams source against a raw redis-rs loop on the same server, in the same
//! run, each in a process of its own, in alternated rounds (median ratio):
//!
//! - `raw`: two consumers of the group, each on its connection reading 64 entries at a
//!   time (`XREADGROUP`, the reply read as it comes, not through the crate's typed
//!   reply) and acknowledging them in one `XACK` sent with its next read, until the
//!   stream is done: the hand-written consumer, as tight as we could make it;
//! - `longshore`: `RedisStreamSource` under two producers (`source_concurrency` 2, two
//!   reads in flight like the raw side's) and two processors of `max_demand` 64, a
//!   do-nothing handler, entries acknowledged per chunk.
//!
//! Each round adds a fresh stream first (not timed). Prints `BENCH case=redis ratio=<x>
//! ...` with peak RSS; `LONGSHORE_BENCH_MESSAGES` sets the entry count (default 200,000;
//! under `cargo test` a short smoke run).

#[path = "../../../test-support/redis.rs"]
mod redis_server;
#[path = "../../../benches/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use longshore_redis::redis::{self, aio::MultiplexedConnection};
use longshore_redis::{RedisStreamConfig, RedisStreamSource};

const BATCH: usize = 64;
const TASKS: usize = 2;

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A stream of `entries` entries of 100 bytes, and its group.
async fn fill(url: &str, stream: &str, entries: u64) {
    let mut connection = connect(url).await;
    let payload = "x".repeat(100);
    for chunk in (0..entries).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for _ in chunk {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("payload")
                .arg(&payload)
                .ignore();
        }
        pipe.query_async::<()>(&mut connection).await.unwrap();
    }
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("g")
        .arg("0")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
}

async fn raw(url: &str, stream: &str, entries: u64) -> u64 {
    let tasks: Vec<_> = (0..TASKS)
        .map(|n| {
            let (url, stream) = (url.to_owned(), stream.to_owned());
            tokio::spawn(async move {
                let mut connection = connect(&url).await;
                let mut done = 0u64;
                let mut read = redis::cmd("XREADGROUP");
                read.arg("GROUP")
                    .arg("g")
                    .arg(format!("raw-{n}"))
                    .arg("COUNT")
                    .arg(BATCH)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">");
                let mut ids: Vec<String> = Vec::new();
                loop {
                    // The last read's XACK goes with the next read: one round trip each.
                    let mut pipe = redis::pipe();
                    if !ids.is_empty() {
                        pipe.cmd("XACK").arg(&stream).arg("g").arg(&ids).ignore();
                    }
                    let (reply,): (redis::Value,) = pipe
                        .add_command(read.clone())
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                    done += ids.len() as u64;
                    ids = ids_of(reply);
                    if ids.is_empty() {
                        return done;
                    }
                }
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.unwrap();
    }
    assert_eq!(done, entries);
    done
}

/// The entry ids of an `XREADGROUP` reply (RESP2), each entry's fields looked at.
fn ids_of(reply: redis::Value) -> Vec<String> {
    use redis::Value;
    let mut ids = Vec::new();
    let Value::Array(streams) = reply else { return ids };
    for stream in streams {
        let Value::Array(mut pair) = stream else { continue };
        let Some(Value::Array(entries)) = pair.pop() else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut entry) = entry else { continue };
            if let Some(Value::Array(fields)) = entry.pop() {
                std::hint::black_box(&fields);
            }
            if let Some(Value::BulkString(id)) = entry.pop() {
                ids.push(String::from_utf8(id).unwrap());
            }
        }
    }
    ids
}

async fn longshore(url: &str, stream: &str, entries: u64) -> u64 {
    let config = RedisStreamConfig::new(url, stream, "g")
        .consumer("longshore")
        .block(Duration::from_millis(100));
    support::consume(
        RedisStreamSource::connect(config).await.unwrap(),
        entries,
        TASKS,
        BATCH,
        TASKS,
    )
    .await
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let (case, url, entries) = (&args[i + 1], &args[i + 2], args[i + 3].parse::<u64>().unwrap());
        let stream = format!("bench-{}", std::process::id());
        let runtime = support::runtime();
        let (rate, done) = runtime.block_on(async {
            fill(url, &stream, entries).await;
            let started = Instant::now();
            let done = match case.as_str() {
                "raw" => raw(url, &stream, entries).await,
                // The stream made and nothing read: what the other cases' instruction
                // counts include besides reading.
                "fill" => entries,
                _ => longshore(url, &stream, entries).await,
            };
            let rate = entries as f64 / started.elapsed().as_secs_f64();
            let mut connection = connect(url).await;
            redis::cmd("DEL")
                .arg(&stream)
                .query_async::<()>(&mut connection)
                .await
                .unwrap();
            (rate, done)
        });
        assert_eq!(done, entries, "{case}: every entry");
        support::report(&[rate, support::peak_rss_mb()]);
        return;
    }
    let (entries, rounds) = support::size(&args, 200_000);
    let server = redis_server::Redis::start();
    let url = server.url();
    support::raw_against_longshore("redis", &url, entries, rounds);
}
