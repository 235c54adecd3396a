//! The guarantees where other consumers break, against librdkafka's mock cluster over TCP:
//! a slow broker never stops consumption for a lag refresh, and a partition stuck behind
//! retries never starves the others.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cluster, committed, config, eventually, per_partition, produce};
use longshore::{BoxError, Handler, Pipeline, Processors, RetryPolicy};
use longshore_kafka::{KafkaMessage, KafkaMetadata, KafkaSource};

const WAIT: Duration = Duration::from_secs(90);

/// Handles each record in about a millisecond, noting when and from which partition;
/// fails every record of `failing` (at once).
struct Timed {
    failing: Option<i32>,
    handled: Mutex<Vec<(Instant, i32)>>,
}

impl Timed {
    fn new(failing: Option<i32>) -> Arc<Self> {
        Arc::new(Timed {
            failing,
            handled: Mutex::default(),
        })
    }

    /// Records of partitions other than partition 0 handled in `[from, to)`.
    fn others_between(&self, from: Instant, to: Instant) -> usize {
        let handled = self.handled.lock().unwrap();
        handled
            .iter()
            .filter(|(at, p)| *at >= from && *at < to && *p != 0)
            .count()
    }
}

impl Handler for Timed {
    type Item = bytes::Bytes;
    type Metadata = KafkaMetadata;

    async fn handle_message(&self, message: &mut KafkaMessage) -> Result<(), BoxError> {
        let partition = message.metadata().partition();
        if Some(partition) == self.failing {
            return Err("this partition always fails".into());
        }
        // The handler's own work, not synchronisation.
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.handled.lock().unwrap().push((Instant::now(), partition));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_never_stops_consumption_for_a_lag_refresh() {
    let _serial = common::serial().await;
    const PARTITIONS: i32 = 40;
    const RECORDS: usize = 16_000;
    let cluster = cluster("slow", PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    produce(&bootstrap, "slow", PARTITIONS, RECORDS, 100);
    // Every request to the broker now takes 300 ms more.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(300))
        .unwrap();

    let config = config(&bootstrap, "g-slow", "slow")
        .property("max.poll.interval.ms", "10000")
        .revoke_drain_timeout(Duration::from_secs(2))
        .lag_interval(Duration::from_millis(500));
    let source = KafkaSource::new(config).unwrap();
    let lag = source.lag();
    let handler = Timed::new(None);
    let pipeline = Pipeline::builder(source, handler.clone())
        .processors(Processors::new(4))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    eventually(WAIT, || stats.get().successful == RECORDS as u64).await;

    // No gap between records handled (about 8 s of work, some 16 lag refreshes) longer
    // than 500 ms: nothing on the poll thread waits for the slow broker.
    let mut times: Vec<Instant> = handler.handled.lock().unwrap().iter().map(|h| h.0).collect();
    times.sort_unstable();
    let gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!(
        "handled {RECORDS} records in {:?}, longest gap {gap:?}",
        times[times.len() - 1] - times[0]
    );
    assert!(
        gap < Duration::from_millis(500),
        "consumption stopped for {gap:?}"
    );
    // The consumer stayed in its group: each record was handled once.
    assert_eq!(stats.get().received, RECORDS as u64, "no record read twice");

    // The lag gauges match the broker once everything is committed.
    let end = per_partition(RECORDS, PARTITIONS);
    eventually(WAIT, || {
        committed(&bootstrap, "g-slow", "slow", PARTITIONS) == end
    })
    .await;
    eventually(WAIT, || {
        let snapshot = lag.snapshot();
        snapshot.len() == PARTITIONS as usize
            && snapshot.iter().all(|p| {
                p.lag == 0 && p.high_watermark == end[p.partition as usize] && p.committed == p.high_watermark
            })
    })
    .await;
    pipeline.shutdown().await.unwrap();
}

/// Records of partitions 1 to 7 handled a second, in the steady state: between one
/// and four seconds after the first record.
async fn others_per_second(group: &str, bootstrap: &str, failing: Option<i32>) -> f64 {
    let handler = Timed::new(failing);
    let source = KafkaSource::new(config(bootstrap, group, "stuck")).unwrap();
    // The defaults: a processor per core (2 here), max_demand 64, max_in_flight 192.
    let mut builder = Pipeline::builder(source, handler.clone()).processors(Processors::new(2));
    if failing.is_some() {
        builder = builder.retry(RetryPolicy::new(5).initial_backoff(Duration::from_secs(5)));
    }
    let pipeline = builder.start().unwrap();
    eventually(WAIT, || !handler.handled.lock().unwrap().is_empty()).await;
    let first = handler.handled.lock().unwrap()[0].0;
    let (from, to) = (first + Duration::from_secs(1), first + Duration::from_secs(4));
    // A measurement window, not synchronisation.
    tokio::time::sleep_until(to.into()).await;
    let rate = handler.others_between(from, to) as f64 / (to - from).as_secs_f64();
    let _ = pipeline.shutdown().await;
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_stuck_behind_retries_does_not_starve_the_others() {
    let _serial = common::serial().await;
    let cluster = cluster("stuck", 8);
    let bootstrap = cluster.bootstrap_servers();
    produce(&bootstrap, "stuck", 8, 40_000, 100);

    let alone = others_per_second("g-alone", &bootstrap, None).await;
    let beside = others_per_second("g-beside", &bootstrap, Some(0)).await;
    let ratio = beside / alone;
    eprintln!(
        "partitions 1 to 7: {alone:.0}/s alone, {beside:.0}/s beside a stuck partition 0 (ratio {ratio:.2})"
    );
    // Starving would be near 0. On this 2-core machine the figure is bimodal, 0.77 to 0.88
    // or 1.10 to 1.15 (ten runs, the same before and after the tracing work; why is not
    // understood yet). The bound is under the lower mode: the test checks starvation.
    assert!(
        ratio >= 0.7,
        "the other partitions kept {ratio:.2} of their throughput"
    );
}
