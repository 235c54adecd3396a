//! The core pipeline's throughput, added latency and peak memory, each as a ratio against
//! two hand-written tokio pipelines of the same shape measured in the same run.
//!
//! Run with `scripts/bench` (or `cargo bench --bench pipeline`). Each case runs in a
//! process of its own so that its peak RSS is its own. Topology (Broadway's benchmark):
//! one producer over an in-memory source, 2 processors, then either no batcher or one
//! batcher (batch size 100, timeout 1 s, concurrency 2), acknowledging to a counter. The
//! `keyed` case has no batcher and orders 64 keys (`partition_by`); the `routed` case is
//! the batcher one with each message named its batcher and given one of 4 batch keys by
//! the handler (`put_batcher`, `put_batch_key`), Broadway's usual use of batchers.
//!
//! Baselines, no framework:
//! - `naive`: one message per channel send, round-robin to per-processor bounded channels;
//! - `chunked`: the same moving vectors of 64 messages, the practical limit of moving
//!   messages between tasks. Keyed, each chunk is split by key over the processors (a
//!   key's processor fixed by its hash: order per key, as cheap as it gets).
//!
//! `LONGSHORE_BENCH_MESSAGES` sets the message count (default 5,000,000).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use longshore::source::memory::MemorySource;
use longshore::{BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors};
use tokio::sync::mpsc;

#[path = "support/callgrind.rs"]
mod callgrind;
#[path = "pipeline/open_loop.rs"]
mod open_loop;
mod support;

use support::Samples;

const PROCESSORS: usize = 2;
const BATCH_SIZE: usize = 100;
const BATCH_CONCURRENCY: usize = 2;
const CHUNK: usize = 64;
/// Keys of the `keyed` case.
const KEYS: u64 = 64;
/// Batch keys of the `routed` case.
const ROUTE_KEYS: u64 = 4;
/// One message in this many is timed from its receipt to its last stage.
const SAMPLE_EVERY: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Batcher,
    NoBatcher,
    Keyed,
    Routed,
}

impl Shape {
    /// Whether the messages go through a batcher.
    fn batches(self) -> bool {
        matches!(self, Shape::Batcher | Shape::Routed)
    }

    /// The batch (its key's index) a baseline's batcher puts `msg` in.
    fn batch_of(self, msg: &Msg) -> usize {
        match self {
            Shape::Routed => (msg.data % ROUTE_KEYS) as usize,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Impl {
    Longshore,
    Naive,
    Chunked,
}

/// What one case measured, in its own process; over rounds, the medians and the highest
/// peak RSS (and for longshore its median ratios to the baselines).
#[derive(Debug, Default)]
struct Measured {
    msgs_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    peak_rss_mb: f64,
    vs_naive: f64,
    vs_chunked: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test` runs this as a smoke test, briefly.
    let bench = args.iter().any(|a| a == "--bench");
    let default_messages = if bench { 5_000_000 } else { 20_000 };
    let messages: u64 = std::env::var("LONGSHORE_BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(default_messages);
    if let Some(i) = args.iter().position(|a| a == "--latency") {
        let rate: f64 = args[i + 2].parse().expect("a rate");
        let m = open_loop::run(args[i + 1] == "longshore", messages, rate);
        support::report(&[m.msgs_per_s, m.p50_us, m.p99_us]);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let shape = match args[i + 1].as_str() {
            "batcher" => Shape::Batcher,
            "keyed" => Shape::Keyed,
            "routed" => Shape::Routed,
            _ => Shape::NoBatcher,
        };
        let imp = match args[i + 2].as_str() {
            "longshore" => Impl::Longshore,
            "naive" => Impl::Naive,
            _ => Impl::Chunked,
        };
        let m = run_case(shape, imp, messages);
        support::report(&[m.msgs_per_s, m.p50_us, m.p99_us, m.peak_rss_mb]);
        return;
    }
    if bench {
        callgrind::require();
    }
    let rounds = support::rounds(bench);
    // A filter selects cases by name.
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--"));
    for name in ["batcher", "no-batcher", "keyed", "routed"] {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let (ours, naive, chunked, range) = in_rounds(name, messages, rounds);
        // Counted under `cargo bench` only: callgrind takes a while.
        let instructions = match bench {
            true => format!(
                " instructions_per_msg={:.0} chunked_instructions_per_msg={:.0}",
                instructions_per_message(name, "longshore"),
                instructions_per_message(name, "chunked"),
            ),
            false => String::new(),
        };
        println!(
            "BENCH case={name} msgs_per_s={:.0} naive_msgs_per_s={:.0} chunked_msgs_per_s={:.0} \
             vs_naive={:.2} vs_chunked={:.2} ratio_range={range} peak_rss_mb={:.1} p50_us={:.0} p99_us={:.0} \
             naive_p50_us={:.0} naive_p99_us={:.0} chunked_p50_us={:.0} chunked_p99_us={:.0} \
             naive_peak_rss_mb={:.1} chunked_peak_rss_mb={:.1} messages={messages} rounds={rounds}{instructions}",
            ours.msgs_per_s,
            naive.msgs_per_s,
            chunked.msgs_per_s,
            ours.vs_naive,
            ours.vs_chunked,
            ours.peak_rss_mb,
            ours.p50_us,
            ours.p99_us,
            naive.p50_us,
            naive.p99_us,
            chunked.p50_us,
            chunked.p99_us,
            naive.peak_rss_mb,
            chunked.peak_rss_mb,
        );
    }
    if filter.is_none_or(|f| "latency".contains(f.as_str())) {
        open_loop::compare(messages);
    }
}

/// The instructions one case runs per message, over 200,000 messages, counted by
/// callgrind from the pipeline's start to its end.
fn instructions_per_message(shape: &str, imp: &str) -> f64 {
    const COUNTED: u64 = 200_000;
    let env = [("LONGSHORE_BENCH_MESSAGES", COUNTED.to_string())];
    let counts = callgrind::counts(&format!("{shape}-{imp}"), &["--case", shape, imp], &env);
    counts.instructions / COUNTED as f64
}

/// Runs one case's three sides, each in a child process, in `rounds` rounds whose
/// order rotates: the median of each rate and latency over the rounds (the ratios are
/// taken within each round, then their median), the highest peak RSS, and the lowest
/// and highest round's ratio to the chunked pipeline.
fn in_rounds(shape: &str, messages: u64, rounds: usize) -> (Measured, Measured, Measured, String) {
    let sides = ["longshore", "naive", "chunked"];
    let mut runs: [Vec<Measured>; 3] = Default::default();
    for round in 0..rounds {
        for turn in 0..sides.len() {
            let side = (turn + round) % sides.len();
            runs[side].push(in_child(shape, sides[side], messages));
        }
    }
    let ratios = |to: usize| -> Vec<f64> {
        runs[0]
            .iter()
            .zip(&runs[to])
            .map(|(ours, theirs)| ours.msgs_per_s / theirs.msgs_per_s)
            .collect()
    };
    let vs_chunked = ratios(2);
    let lowest = vs_chunked.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = vs_chunked.iter().copied().fold(0.0, f64::max);
    let vs_naive = support::median(ratios(1));
    let [ours, naive, chunked] = runs.map(|runs| Measured {
        msgs_per_s: support::median(runs.iter().map(|m| m.msgs_per_s).collect()),
        p50_us: support::median(runs.iter().map(|m| m.p50_us).collect()),
        p99_us: support::median(runs.iter().map(|m| m.p99_us).collect()),
        peak_rss_mb: runs.iter().map(|m| m.peak_rss_mb).fold(0.0, f64::max),
        ..Measured::default()
    });
    let ours = Measured {
        vs_naive,
        vs_chunked: support::median(vs_chunked),
        ..ours
    };
    (ours, naive, chunked, format!("{lowest:.2}-{highest:.2}"))
}

/// Runs one case in a child process.
fn in_child(shape: &str, imp: &str, messages: u64) -> Measured {
    let env = [("LONGSHORE_BENCH_MESSAGES", messages.to_string())];
    let v = support::run_child(&["--case", shape, imp], &env);
    Measured {
        msgs_per_s: v[0],
        p50_us: v[1],
        p99_us: v[2],
        peak_rss_mb: v[3],
        ..Measured::default()
    }
}

fn run_case(shape: Shape, imp: Impl, messages: u64) -> Measured {
    let runtime = support::runtime();
    let samples = Arc::new(Samples::default());
    let started = Instant::now();
    callgrind::start();
    let done = runtime.block_on(async {
        match imp {
            Impl::Longshore => longshore_pipeline(shape, messages, samples.clone()).await,
            Impl::Naive => naive_pipeline(shape, messages, samples.clone()).await,
            Impl::Chunked => chunked_pipeline(shape, messages, samples.clone()).await,
        }
    });
    callgrind::end();
    let elapsed = started.elapsed();
    assert_eq!(done, messages, "every message acknowledged");
    Measured {
        msgs_per_s: messages as f64 / elapsed.as_secs_f64(),
        p50_us: samples.percentile(0.50),
        p99_us: samples.percentile(0.99),
        peak_rss_mb: support::peak_rss_mb(),
        ..Measured::default()
    }
}

// ---------------------------------------------------------------- longshore

struct Bench {
    samples: Arc<Samples>,
    /// Names each message's batcher and batch key (the `routed` case).
    route: bool,
}

impl Handler for Bench {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, message: &mut Message<u64>) -> Result<(), BoxError> {
        if self.route {
            let key = *message.data() % ROUTE_KEYS;
            message.put_batcher("bench").put_batch_key(key);
        }
        black_box(message.data());
        Ok(())
    }

    async fn handle_batch(&self, batch: &mut [Message<u64>], _: &BatchInfo) -> Result<(), BoxError> {
        for message in batch.iter() {
            if black_box(*message.data()).is_multiple_of(SAMPLE_EVERY) {
                self.samples
                    .record(message.received_at().expect("set on receipt"));
            }
        }
        Ok(())
    }
}

/// The no-batcher shape samples latency in the processor, the last stage there.
struct BenchNoBatcher {
    samples: Arc<Samples>,
}

impl Handler for BenchNoBatcher {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, message: &mut Message<u64>) -> Result<(), BoxError> {
        if black_box(*message.data()).is_multiple_of(SAMPLE_EVERY) {
            self.samples
                .record(message.received_at().expect("set on receipt"));
        }
        Ok(())
    }
}

async fn longshore_pipeline(shape: Shape, messages: u64, samples: Arc<Samples>) -> u64 {
    let source = MemorySource::from_iter(0..messages);
    let counts = source.counts();
    let processors = Processors::new(PROCESSORS);
    let pipeline = match shape {
        Shape::Batcher | Shape::Routed => Pipeline::builder(
            source,
            Bench {
                samples,
                route: shape == Shape::Routed,
            },
        )
        .processors(processors)
        .batcher(
            Batcher::new("bench")
                .batch_size(BATCH_SIZE)
                .batch_timeout(Duration::from_secs(1))
                .concurrency(BATCH_CONCURRENCY),
        )
        .start(),
        Shape::NoBatcher => Pipeline::builder(source, BenchNoBatcher { samples })
            .processors(processors)
            .start(),
        Shape::Keyed => Pipeline::builder(source, BenchNoBatcher { samples })
            .processors(processors)
            .partition_by(|m: &Message<u64>| *m.data() % KEYS)
            .start(),
    };
    pipeline
        .expect("valid")
        .wait()
        .await
        .expect("the pipeline ends cleanly");
    counts.successful()
}

// ---------------------------------------------------------------- baselines

/// A baseline's message: the payload, and its receipt time when it is sampled.
struct Msg {
    data: u64,
    at: Option<Instant>,
}

fn produce(i: u64) -> Msg {
    Msg {
        data: i,
        at: i.is_multiple_of(SAMPLE_EVERY).then(Instant::now),
    }
}

fn finish(msg: &Msg, samples: &Samples) {
    if let Some(at) = black_box(msg).at {
        samples.record(at);
    }
}

/// The baselines' batch processors: count each batch's messages as acknowledged.
fn batch_processors(
    inputs: Vec<mpsc::Receiver<Vec<Msg>>>,
    acked: &Arc<AtomicU64>,
    samples: &Arc<Samples>,
) -> Vec<tokio::task::JoinHandle<()>> {
    inputs
        .into_iter()
        .map(|mut rx| {
            let (acked, samples) = (acked.clone(), samples.clone());
            tokio::spawn(async move {
                while let Some(batch) = rx.recv().await {
                    batch.iter().for_each(|m| finish(m, &samples));
                    acked.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

/// A baseline's batcher: a batch filling per key (one without keys), each sent when
/// full to the batch processors in turn, the rest at the end.
struct Batches {
    shape: Shape,
    filling: Vec<Vec<Msg>>,
    to: Vec<mpsc::Sender<Vec<Msg>>>,
    next: usize,
}

impl Batches {
    fn new(shape: Shape, to: Vec<mpsc::Sender<Vec<Msg>>>) -> Self {
        let keys = if shape == Shape::Routed {
            ROUTE_KEYS as usize
        } else {
            1
        };
        Batches {
            shape,
            filling: (0..keys).map(|_| Vec::with_capacity(BATCH_SIZE)).collect(),
            to,
            next: 0,
        }
    }

    /// Adds `msg` to its batch: the batch if that filled it.
    #[inline]
    fn push(&mut self, msg: Msg) -> Option<Vec<Msg>> {
        let batch = &mut self.filling[self.shape.batch_of(&msg)];
        batch.push(msg);
        (batch.len() == BATCH_SIZE).then(|| std::mem::replace(batch, Vec::with_capacity(BATCH_SIZE)))
    }

    /// Sends a full batch to the next batch processor.
    async fn send(&mut self, full: Vec<Msg>) {
        self.to[self.next % BATCH_CONCURRENCY].send(full).await.unwrap();
        self.next += 1;
    }

    async fn flush(self) {
        for batch in self.filling.into_iter().filter(|batch| !batch.is_empty()) {
            self.to[0].send(batch).await.unwrap();
        }
    }
}

async fn naive_pipeline(shape: Shape, messages: u64, samples: Arc<Samples>) -> u64 {
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let (batch_txs, batch_rxs): (Vec<_>, Vec<_>) = (0..BATCH_CONCURRENCY)
        .map(|_| mpsc::channel::<Vec<Msg>>(1))
        .unzip();
    let (batcher_tx, mut batcher_rx) = mpsc::channel::<Msg>(CHUNK);
    if shape.batches() {
        tasks.extend(batch_processors(batch_rxs, &acked, &samples));
        tasks.push(tokio::spawn(async move {
            let mut batches = Batches::new(shape, batch_txs);
            while let Some(msg) = batcher_rx.recv().await {
                if let Some(full) = batches.push(msg) {
                    batches.send(full).await;
                }
            }
            batches.flush().await;
        }));
    }
    let mut processor_txs = Vec::new();
    for _ in 0..PROCESSORS {
        let (tx, mut rx) = mpsc::channel::<Msg>(CHUNK);
        processor_txs.push(tx);
        let (acked, samples, batcher_tx) = (acked.clone(), samples.clone(), batcher_tx.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                black_box(msg.data);
                if shape.batches() {
                    batcher_tx.send(msg).await.unwrap();
                } else {
                    finish(&msg, &samples);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    drop(batcher_tx);
    tasks.push(tokio::spawn(async move {
        for i in 0..messages {
            // Keyed, a key's processor is fixed: (i % KEYS) % PROCESSORS.
            let to = if shape == Shape::Keyed { i % KEYS } else { i };
            processor_txs[to as usize % PROCESSORS]
                .send(produce(i))
                .await
                .unwrap();
        }
    }));
    for task in tasks {
        task.await.unwrap();
    }
    acked.load(Ordering::Relaxed)
}

async fn chunked_pipeline(shape: Shape, messages: u64, samples: Arc<Samples>) -> u64 {
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let (batch_txs, batch_rxs): (Vec<_>, Vec<_>) = (0..BATCH_CONCURRENCY)
        .map(|_| mpsc::channel::<Vec<Msg>>(1))
        .unzip();
    let (batcher_tx, mut batcher_rx) = mpsc::channel::<Vec<Msg>>(4);
    if shape.batches() {
        tasks.extend(batch_processors(batch_rxs, &acked, &samples));
        tasks.push(tokio::spawn(async move {
            let mut batches = Batches::new(shape, batch_txs);
            while let Some(chunk) = batcher_rx.recv().await {
                for msg in chunk {
                    if let Some(full) = batches.push(msg) {
                        batches.send(full).await;
                    }
                }
            }
            batches.flush().await;
        }));
    }
    let mut processor_txs = Vec::new();
    for _ in 0..PROCESSORS {
        let (tx, mut rx) = mpsc::channel::<Vec<Msg>>(4);
        processor_txs.push(tx);
        let (acked, samples, batcher_tx) = (acked.clone(), samples.clone(), batcher_tx.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                chunk.iter().for_each(|m| {
                    black_box(m.data);
                });
                if shape.batches() {
                    batcher_tx.send(chunk).await.unwrap();
                } else {
                    chunk.iter().for_each(|m| finish(m, &samples));
                    acked.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    drop(batcher_tx);
    tasks.push(tokio::spawn(async move {
        let mut next = 0;
        let mut i = 0;
        while i < messages {
            let end = (i + CHUNK as u64).min(messages);
            if shape == Shape::Keyed {
                let mut parts: Vec<Vec<Msg>> = (0..PROCESSORS)
                    .map(|_| Vec::with_capacity(CHUNK / PROCESSORS + 1))
                    .collect();
                for j in i..end {
                    parts[((j % KEYS) as usize) % PROCESSORS].push(produce(j));
                }
                for (to, part) in parts.into_iter().enumerate() {
                    processor_txs[to].send(part).await.unwrap();
                }
            } else {
                let chunk: Vec<Msg> = (i..end).map(produce).collect();
                processor_txs[next % PROCESSORS].send(chunk).await.unwrap();
                next += 1;
            }
            i = end;
        }
    }));
    for task in tasks {
        task.await.unwrap();
    }
    acked.load(Ordering::Relaxed)
}
