//! Consume -> handle -> commit through longshore, against a raw rdkafka consumer loop
//! reading the same topic in the same run (the baseline reads, borrowed, what a longshore
//! handler is given: key, payload, headers and timestamp; a loop reading only payloads is
//! reported beside it), on librdkafka's mock cluster (40 partitions)
//! and on a tansu broker process. Each consumer runs in a process of its own, so that
//! its peak RSS is its own; throughput is timed from its first record to its last.
//!
//! Run with `scripts/bench kafka`. `LONGSHORE_BENCH_MESSAGES` sets the record count
//! (default 1,000,000 on the mock cluster; a fifth of it on tansu), and
//! `LONGSHORE_BENCH_ROUNDS` the rounds of adjacent runs (default 5; the median is reported).
//! `scripts/bench kafka mock` (or `tansu`) runs one broker only.
//! `cpu_ratio` is the consumer process's CPU time (user and system) against the raw
//! loop's, for the same records; `instructions_per_record` and `allocations_per_record`
//! (the C allocator's calls), on both sides, are counted by callgrind (librdkafka's
//! threads included) from the consumer's creation to its last
//! record (its prefetch included, which starts before the first record), over a topic a
//! tenth as large, read whole.
//!
//! To compare two builds with less noise than whole runs give, serve a topic with one
//! (`<bench binary> --serve-mock <records>` prints the mock cluster's address and
//! serves until killed; it holds the timed topic only, not the counted one), then run
//! each build's child alternately against it:
//! `<bench binary> --case longshore|raw|raw-payload <address> <fresh group> <records>`
//! prints `RESULT <msgs/s> <peak RSS MB> <p50 µs> <p99 µs> <CPU s>`.

use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use longshore::{BoxError, Handler, Pipeline, Processors};
use longshore_kafka::{KafkaConfig, KafkaMessage, KafkaMetadata, KafkaSource};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;

#[path = "../../../benches/support/callgrind.rs"]
mod callgrind;
#[path = "kafka/latency.rs"]
mod latency;
#[path = "../../../benches/support/mod.rs"]
mod support;
#[path = "../tests/common/tansu.rs"]
mod tansu;

use support::{Countdown, Samples};
use tansu::{create_topic, Tansu};

const TOPIC: &str = "bench";
/// Each topic's partitions on the mock cluster.
const MOCK_PARTITIONS: i32 = 40;
/// A tenth of `TOPIC`'s records, which each counted run (under callgrind) reads whole:
/// a run stopped partway would count, on the side that prefetches more, records read
/// ahead and never handled.
const COUNTED_TOPIC: &str = "bench-counted";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--latency") {
        let (imp, bootstrap, group) = (&args[i + 1], &args[i + 2], &args[i + 3]);
        let (count, rate) = (args[i + 4].parse().unwrap(), args[i + 5].parse().unwrap());
        match imp.as_str() {
            "raw" => support::report(&latency::raw(bootstrap, group, count, rate)),
            _ => support::report(&latency::run(bootstrap, group, count, rate)),
        }
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--serve-mock") {
        let count: usize = args[i + 1].parse().expect("a record count");
        let cluster = mock_cluster(&[(TOPIC, count)]);
        println!("{}", cluster.bootstrap_servers());
        std::thread::sleep(Duration::from_secs(100_000));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let (imp, bootstrap, group) = (&args[i + 1], &args[i + 2], &args[i + 3]);
        let count: usize = args[i + 4].parse().unwrap();
        let topic = args.get(i + 5).map_or(TOPIC, String::as_str);
        let [rate, p50, p99] = match imp.as_str() {
            "raw" => [raw(bootstrap, group, topic, count, Read::Record), 0.0, 0.0],
            "raw-payload" => [raw(bootstrap, group, topic, count, Read::Payload), 0.0, 0.0],
            _ => ours(bootstrap, group, topic, count),
        };
        support::report(&[rate, support::peak_rss_mb(), p50, p99, support::cpu_seconds()]);
        return;
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let count: usize = std::env::var("LONGSHORE_BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(if smoke { 20_000 } else { 1_000_000 });
    if !smoke {
        callgrind::require();
    }

    // `scripts/bench kafka tansu` (or `mock`) runs one broker's case only.
    let only =
        |broker: &str| !args.iter().any(|a| a == "mock" || a == "tansu") || args.iter().any(|a| a == broker);
    if only("mock") {
        let cluster = mock_cluster(&[(TOPIC, count), (COUNTED_TOPIC, count / 10)]);
        let peak = compare("kafka-mock", &cluster.bootstrap_servers(), count, smoke);
        cluster
            .create_topic(latency::TOPICS[0], latency::PARTITIONS, 1)
            .expect("topic");
        cluster
            .create_topic(latency::TOPICS[1], latency::PARTITIONS, 1)
            .expect("topic");
        open_loop(&cluster.bootstrap_servers(), count, peak / 2.0);
    }
    if !only("tansu") {
        return;
    }
    let tansu = Tansu::start();
    let count = count / 5;
    create_topic(&tansu.bootstrap, TOPIC, 4);
    create_topic(&tansu.bootstrap, COUNTED_TOPIC, 4);
    // One record per batch: tansu 0.6 does not serve fetches starting inside a batch.
    produce(&tansu.bootstrap, TOPIC, 4, count, 1);
    produce(&tansu.bootstrap, COUNTED_TOPIC, 4, count / 10, 1);
    compare("kafka-tansu", &tansu.bootstrap, count, smoke);
}

/// Consumes `count` records produced at `rate` a second, through longshore and through
/// the raw loop (each a child process, consumer and producer), and prints the BENCH
/// line of the latency case.
fn open_loop(bootstrap: &str, count: usize, rate: f64) {
    let run = |imp: &str| {
        let group = format!("latency-{imp}-{}", std::process::id());
        let args = [count.to_string(), rate.to_string()];
        support::run_child(&["--latency", imp, bootstrap, &group, &args[0], &args[1]], &[])
    };
    let (v, raw) = (run("longshore"), run("raw"));
    // Below the planned rate a producer or a consumer, sharing the cores, fell behind:
    // the end-to-end times then hold a growing backlog, not a latency.
    let held = v[0] >= 0.95 * rate && raw[0] >= 0.95 * rate;
    println!(
        "BENCH case=kafka-mock-latency rate={rate:.0} msgs_per_s={:.0} raw_msgs_per_s={:.0} rate_held={held} \
         p50_us={:.0} p99_us={:.0} end_to_end_p50_us={:.0} end_to_end_p99_us={:.0} \
         raw_end_to_end_p50_us={:.0} raw_end_to_end_p99_us={:.0} messages={count}",
        v[0], raw[0], v[1], v[2], v[3], v[4], raw[1], raw[2]
    );
}

/// Runs both consumers over the topic at `bootstrap` and prints the BENCH line; returns
/// longshore's median rate.
fn compare(case: &str, bootstrap: &str, count: usize, smoke: bool) -> f64 {
    // A fresh group per run: each reads the topic from its start.
    let runs = std::cell::Cell::new(0);
    let run = |imp: &str| {
        runs.set(runs.get() + 1);
        let group = format!("{imp}-{}-{}", std::process::id(), runs.get());
        support::run_child(&["--case", imp, bootstrap, &group, &count.to_string()], &[])
    };
    // Rounds of three adjacent runs, their order alternated: the machine's and the brokers'
    // speed drift over a run, so each round's ratios compare neighbours, and the median
    // round is reported, with the lowest and highest beside it.
    let rounds: usize = std::env::var("LONGSHORE_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if smoke { 1 } else { 5 });
    let mut measured: Vec<[Vec<f64>; 3]> = Vec::new();
    for round in 0..rounds {
        let [raw, ours, payload] = if round % 2 == 0 {
            [run("raw"), run("longshore"), run("raw-payload")]
        } else {
            let (payload, ours) = (run("raw-payload"), run("longshore"));
            [run("raw"), ours, payload]
        };
        measured.push([raw, ours, payload]);
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let of = |imp: usize, field: usize| median(measured.iter().map(|m| m[imp][field]).collect());
    let ratios = |baseline: usize| -> Vec<f64> {
        let mut ratios: Vec<f64> = measured.iter().map(|m| m[1][0] / m[baseline][0]).collect();
        ratios.sort_by(f64::total_cmp);
        ratios
    };
    let (full, payload) = (ratios(0), ratios(2));
    // CPU time per record against the whole-record loop: steadier than throughput on a
    // machine whose cores the broker shares.
    let cpu = median(measured.iter().map(|m| m[1][4] / m[0][4]).collect());
    // Counted under `cargo bench` only, over the tenth as large topic: callgrind takes a while.
    let instructions = match smoke {
        true => String::new(),
        false => {
            let counted = |imp: &str| {
                runs.set(runs.get() + 1);
                let group = format!("{imp}-counted-{}-{}", std::process::id(), runs.get());
                let records = (count / 10).to_string();
                let args = ["--case", imp, bootstrap, &group, &records, COUNTED_TOPIC];
                let counts = callgrind::counts(&format!("{case}-{imp}"), &args, &[]);
                let per_record = |n: f64| n / (count / 10) as f64;
                (per_record(counts.instructions), per_record(counts.allocations))
            };
            let ((ours, ours_allocations), (raw, raw_allocations)) = (counted("longshore"), counted("raw"));
            format!(
                " instructions_per_record={ours:.0} baseline_instructions_per_record={raw:.0} \
                 instructions_ratio={:.2} allocations_per_record={ours_allocations:.2} \
                 baseline_allocations_per_record={raw_allocations:.2}",
                ours / raw
            )
        }
    };
    println!(
        "BENCH case={case} msgs_per_s={:.0} baseline_msgs_per_s={:.0} ratio={:.2} peak_rss_mb={:.1} \
         baseline_peak_rss_mb={:.1} p50_us={:.0} p99_us={:.0} ratio_min={:.2} ratio_max={:.2} \
         payload_only_baseline_msgs_per_s={:.0} payload_only_ratio={:.2} cpu_ratio={cpu:.2} rounds={rounds} messages={count}{instructions}",
        of(1, 0),
        of(0, 0),
        median(full.clone()),
        of(1, 1),
        of(0, 1),
        of(1, 2),
        of(1, 3),
        full[0],
        full[full.len() - 1],
        of(2, 0),
        median(payload),
    );
    of(1, 0)
}

/// Records of 100 bytes, round-robin over partitions.
fn produce(bootstrap: &str, topic: &str, partitions: i32, count: usize, per_batch: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", per_batch.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let payload = [b'x'; 100];
    for i in 0..count {
        let key = (i % 1000).to_string();
        let mut record = BaseRecord::to(topic)
            .key(&key)
            .payload(&payload[..])
            .partition((i % partitions as usize) as i32);
        while let Err((_, back)) = producer.send(record) {
            record = back;
            producer.poll(Duration::from_millis(5));
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("all records written");
}

/// What the raw loop reads of each record.
#[derive(Clone, Copy, PartialEq)]
enum Read {
    /// Everything a longshore handler is given (key, payload, headers, timestamp),
    /// borrowed: the baseline.
    Record,
    /// The payload alone.
    Payload,
}

/// The raw loops keep the records they read and drop them in runs of this many, not each
/// once read: that measured faster here (docs/benchmarks.md gives the figures).
const DROPPED_TOGETHER: usize = 2048;

/// The raw loops' consumer of `topic`, from its start, committing every 5 s
/// (librdkafka's auto commit), with the fetch settings longshore uses, so that the
/// baseline is the best raw loop.
fn raw_consumer(bootstrap: &str, group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("fetch.queue.backoff.ms", "20")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// The baseline: a plain rdkafka consumer loop, dropping what it read in runs of
/// [`DROPPED_TOGETHER`].
fn raw(bootstrap: &str, group: &str, topic: &str, count: usize, read: Read) -> f64 {
    callgrind::start();
    let consumer = raw_consumer(bootstrap, group, topic);
    let mut seen = 0;
    let mut started = None;
    let mut read_ones = Vec::with_capacity(DROPPED_TOGETHER);
    while seen < count {
        if read_ones.len() == DROPPED_TOGETHER {
            read_ones.clear();
        }
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            black_box(message.payload());
            if read == Read::Record {
                black_box((message.key(), message.timestamp()));
                black_box(message.headers().map(|headers| headers.iter().count()));
            }
            seen += 1;
            read_ones.push(message);
        }
    }
    // The last run is dropped inside the measured part, as each earlier one was.
    drop(read_ones);
    let elapsed = started.expect("records").elapsed();
    callgrind::end();
    count as f64 / elapsed.as_secs_f64()
}

/// Reads the payload; on one record in 64, samples the latency the pipeline adds: from
/// its receipt from the source to its handler. Times the run from the first record
/// handled to the last.
struct Touch {
    samples: Samples,
    first: OnceLock<Instant>,
    countdown: Countdown,
}

impl Handler for Touch {
    type Item = bytes::Bytes;
    type Metadata = KafkaMetadata;
    async fn handle_message(&self, message: &mut KafkaMessage) -> Result<(), BoxError> {
        self.first.get_or_init(Instant::now);
        black_box(message.metadata().payload());
        if message.metadata().offset() % 64 == 0 {
            if let Some(at) = message.received_at() {
                self.samples.record(at);
            }
        }
        self.countdown.handled();
        Ok(())
    }
}

/// A mock cluster holding `topics` of [`MOCK_PARTITIONS`], each with its record count.
fn mock_cluster(topics: &[(&str, usize)]) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for &(topic, records) in topics {
        cluster.create_topic(topic, MOCK_PARTITIONS, 1).expect("topic");
        produce(
            &cluster.bootstrap_servers(),
            topic,
            MOCK_PARTITIONS,
            records,
            10_000,
        );
    }
    cluster
}

/// The runtime longshore runs on here: one worker, as the README advises, the poll thread
/// keeping the machine's other core busy. One worker read 5–13% more records a second than
/// two (tokio's default on two cores) for 2–8% less CPU (docs/benchmarks.md).
fn runtime() -> tokio::runtime::Runtime {
    support::runtime_with_workers(1)
}

/// longshore: the Kafka source, 2 processors in partition order, commits every 5 s.
fn ours(bootstrap: &str, group: &str, topic: &str, count: usize) -> [f64; 3] {
    let touch = Arc::new(Touch {
        samples: Samples::default(),
        first: OnceLock::new(),
        countdown: Countdown::new(count),
    });
    let runtime = runtime();
    runtime.block_on(async {
        callgrind::start();
        let source = KafkaSource::new(KafkaConfig::new(bootstrap, group, [topic])).expect("source");
        let pipeline = Pipeline::builder(source, touch.clone())
            .processors(Processors::new(2))
            .start()
            .unwrap();
        // A stall fails the run, saying where the pipeline stands, instead of hanging it.
        let stats = pipeline.stats();
        if tokio::time::timeout(std::time::Duration::from_secs(300), touch.countdown.finished())
            .await
            .is_err()
        {
            panic!("longshore consumed nothing more for 5 minutes: {:?}", stats.get());
        }
        callgrind::end();
        let rate = count as f64 / touch.first.get().expect("records").elapsed().as_secs_f64();
        pipeline.shutdown().await.expect("drains");
        [
            rate,
            touch.samples.percentile(0.50),
            touch.samples.percentile(0.99),
        ]
    })
}
