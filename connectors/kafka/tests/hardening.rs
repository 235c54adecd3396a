//! The guarantees where other consumers break, against librdkafka's mock cluster over TCP:
//! a slow broker never stops consumption for a lag refresh, and a partition stuck behind
//! retries never starves the others.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cluster, committed, config, eventually, per_partition, produce};
use longshore::{BoxError, Handler, Message, Pipeline, Processors, RetryPolicy};
use longshore_kafka::{KafkaRecord, KafkaSource};

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
    type Item = KafkaRecord;

    async fn handle_message(&self, message: &mut Message<KafkaRecord>) -> Result<(), BoxError> {
        let partition = message.data().partition();
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
    // The defaults: a processor per core (2 here), max_demand 64, max_in_flight 128.
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
    assert!(
        ratio >= 0.8,
        "the other partitions kept {ratio:.2} of their throughput"
    );
}

/// Kafka's zigzag varint.
fn varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// CRC-32C (Castagnoli), as record batches carry it.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A header as written on the wire: any bytes for its name, a value or null.
type RawHeader<'a> = (&'a [u8], Option<&'a [u8]>);

/// Writes one record batch (magic 2) to `partition` with a hand-encoded Produce request
/// (v3), the way a client in another language may: names of headers are bytes on the
/// wire, and librdkafka's own producer only takes UTF-8 ones.
fn produce_raw(bootstrap: &str, topic: &str, partition: i32, records: &[(&[u8], Vec<RawHeader<'_>>)]) {
    use std::io::{Read, Write};
    let mut encoded = Vec::new();
    for (delta, (value, headers)) in records.iter().enumerate() {
        let mut body = vec![0u8]; // attributes
        varint(&mut body, 0); // timestamp delta
        varint(&mut body, delta as i64);
        varint(&mut body, -1); // no key
        varint(&mut body, value.len() as i64);
        body.extend_from_slice(value);
        varint(&mut body, headers.len() as i64);
        for (name, value) in headers {
            varint(&mut body, name.len() as i64);
            body.extend_from_slice(name);
            match value {
                Some(value) => {
                    varint(&mut body, value.len() as i64);
                    body.extend_from_slice(value);
                }
                None => varint(&mut body, -1),
            }
        }
        varint(&mut encoded, body.len() as i64);
        encoded.extend(body);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut checked = Vec::new();
    checked.extend(0i16.to_be_bytes()); // attributes
    checked.extend((records.len() as i32 - 1).to_be_bytes()); // last offset delta
    checked.extend(now.to_be_bytes());
    checked.extend(now.to_be_bytes());
    checked.extend((-1i64).to_be_bytes()); // producer id
    checked.extend((-1i16).to_be_bytes()); // producer epoch
    checked.extend((-1i32).to_be_bytes()); // base sequence
    checked.extend((records.len() as i32).to_be_bytes());
    checked.extend(encoded);
    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // base offset
    batch.extend((4 + 1 + 4 + checked.len() as i32).to_be_bytes());
    batch.extend((-1i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend(crc32c(&checked).to_be_bytes());
    batch.extend(checked);

    let mut request = Vec::new();
    request.extend(0i16.to_be_bytes()); // Produce
    request.extend(3i16.to_be_bytes());
    request.extend(7i32.to_be_bytes()); // correlation id
    request.extend((4i16).to_be_bytes());
    request.extend(b"test");
    request.extend((-1i16).to_be_bytes()); // no transactional id
    request.extend(1i16.to_be_bytes()); // acks
    request.extend(10_000i32.to_be_bytes());
    request.extend(1i32.to_be_bytes());
    request.extend((topic.len() as i16).to_be_bytes());
    request.extend(topic.as_bytes());
    request.extend(1i32.to_be_bytes());
    request.extend(partition.to_be_bytes());
    request.extend((batch.len() as i32).to_be_bytes());
    request.extend(batch);
    let address = bootstrap.split(',').next().unwrap();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(&(request.len() as i32).to_be_bytes()).unwrap();
    stream.write_all(&request).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut answer = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut answer).unwrap();
    // correlation id, topics (1), name, partitions (1), index, then the error code.
    let at = 4 + 4 + 2 + topic.len() + 4 + 4;
    let error = i16::from_be_bytes([answer[at], answer[at + 1]]);
    assert_eq!(error, 0, "the broker refused the hand-written batch");
}

/// Keeps every record it handles.
#[derive(Default)]
struct Keep(Mutex<Vec<KafkaRecord>>);

impl Handler for Keep {
    type Item = KafkaRecord;
    async fn handle_message(&self, message: &mut Message<KafkaRecord>) -> Result<(), BoxError> {
        self.0.lock().unwrap().push(message.data().clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_never_stops_the_consumer() {
    let _serial = common::serial().await;
    let cluster = cluster("headers", 2);
    let bootstrap = cluster.bootstrap_servers();
    produce(&bootstrap, "headers", 2, 100, 10);
    // On partition 0: a header named with bytes that are not UTF-8, and one record with a
    // null and an empty header value.
    let bad: &[u8] = b"\xff\xfename";
    produce_raw(
        &bootstrap,
        "headers",
        0,
        &[
            (b"bad", vec![(bad, Some(b"v")), (b"kept", Some(b"k"))]),
            (b"nulls", vec![(b"null", None), (b"empty", Some(b""))]),
        ],
    );
    produce(&bootstrap, "headers", 2, 100, 10);

    let keep = Arc::new(Keep::default());
    let source = KafkaSource::new(config(&bootstrap, "headers-group", "headers")).unwrap();
    let pipeline = Pipeline::builder(source, keep.clone()).start().unwrap();
    // Everything behind the bad record, on every partition, handled and committed.
    let ends = vec![102, 100];
    eventually(WAIT, || {
        committed(&bootstrap, "headers-group", "headers", 2) == ends
    })
    .await;
    pipeline.shutdown().await.unwrap();

    let records = keep.0.lock().unwrap().clone();
    assert_eq!(records.len(), 202, "every record delivered once");
    let find = |payload: &[u8]| {
        records
            .iter()
            .find(|r| r.payload() == Some(payload))
            .unwrap()
            .clone()
    };
    let bad = find(b"bad");
    assert_eq!(bad.unreadable_headers(), 1);
    assert_eq!(bad.headers(), [("kept".to_owned(), Some(b"k".to_vec()))]);
    let nulls = find(b"nulls");
    assert_eq!(
        nulls.headers(),
        [("null".to_owned(), None), ("empty".to_owned(), Some(Vec::new()))]
    );
}
