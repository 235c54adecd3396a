//! A tansu broker process, keeping its data in SQLite, killed (SIGKILL) and restarted in
//! the middle of a run: the consumer reconnects and loses nothing.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::tansu::{create_topic, Tansu};
use common::{committed, config, eventually, produce_with, Recorder};
use longshore::{Pipeline, Processors};
use longshore_kafka::KafkaSource;

const WAIT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_mid_run_loses_nothing() {
    let _serial = common::serial().await;
    // The test command's run; `scripts/chaos` sets a 25th of LONGSHORE_CHAOS_RECORDS (SQLite
    // storage makes producing slow).
    let records = std::env::var("LONGSHORE_CHAOS_RECORDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(6_000, |n| n / 25);
    let dir = std::env::temp_dir().join(format!("longshore-tansu-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let setup = dir.clone();
    let mut broker = tokio::task::spawn_blocking(move || {
        let broker = Tansu::start_persistent(&setup);
        create_topic(&broker.bootstrap, "restarted", 2);
        // One record per batch: tansu 0.6 does not serve a fetch that starts inside a batch.
        produce_with(&broker.bootstrap, "restarted", 2, records, 20, 1);
        broker
    })
    .await
    .unwrap();

    let recorder = Arc::new(Recorder {
        delay: Some(Duration::from_micros(300)),
        ..Recorder::default()
    });
    let source = KafkaSource::new(config(&broker.bootstrap, "restart", "restarted")).unwrap();
    let pipeline = Pipeline::builder(source, recorder.clone())
        .processors(Processors::new(2).max_demand(10).min_demand(5))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    let in_flight_bound = stats.get().max_in_flight;
    eventually(WAIT, || recorder.payloads().len() >= records / 4).await;

    let bootstrap = broker.bootstrap.clone();
    let broker = tokio::task::spawn_blocking(move || {
        broker.restart(Duration::from_secs(2));
        broker
    })
    .await
    .unwrap();

    let unique = || recorder.payloads().into_iter().collect::<BTreeSet<usize>>().len();
    eventually(WAIT, || unique() == records).await;
    eventually(WAIT, || {
        committed(&bootstrap, "restart", "restarted", 2)
            .iter()
            .sum::<i64>()
            == records as i64
    })
    .await;
    pipeline.shutdown().await.unwrap();
    let handled = recorder.payloads().len();
    let duplicates = handled - records;
    println!(
        "CHAOS case=kafka-broker-restart-tansu produced={records} handled_unique={} lost={} \
         duplicates={duplicates} inflight_bound={in_flight_bound}",
        unique(),
        records - unique()
    );
    // What was in flight or fetched ahead and not committed when the broker died.
    assert!(
        duplicates <= in_flight_bound + 2 * 1_000,
        "duplicates {duplicates}"
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
