//! The latency case: messages arrive at a fixed rate, half of the peak measured in the
//! same run (an open loop: arrivals do not wait for the pipeline), and each sampled one
//! is timed from its arrival in the source's channel to its acknowledgement, so waiting
//! for demand counts too. No batcher, 2 processors of `max_demand` 64, against the
//! chunked pipeline fed by the same arrivals.
//!
//! Arrivals come from a thread of their own, in bursts every [`TICK`]: what is due since
//! the last burst, as a network delivers packets. An open loop never waits for the
//! pipeline: should the queue of bursts fill, the pipeline fell behind and the run fails.
//! The peak is measured with bursts of [`CHUNK`] sent as fast as the queue takes them.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use longshore::source::{Acknowledger, Source};
use longshore::{BoxError, Handler, Message, Pipeline, Processors};
use tokio::sync::mpsc;

use super::support::{self, Samples};
use super::{CHUNK, PROCESSORS, SAMPLE_EVERY};

/// How often the arrival thread sends what is due.
const TICK: Duration = Duration::from_micros(50);
/// The queue of bursts in front of the pipeline.
const QUEUE: usize = 1024;

/// A message as it arrives: its number, and its arrival time when it is sampled.
struct Arrival {
    n: u64,
    at: Option<Instant>,
}

/// What arrived at one tick.
type Burst = Vec<Arrival>;

/// What one run measured.
pub(crate) struct Measured {
    pub(crate) msgs_per_s: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

/// Measures the peak (longshore fed as fast as the arrival thread can send), then both
/// pipelines at half of it, in `LONGSHORE_BENCH_ROUNDS` alternated rounds (default 3),
/// and prints the medians.
pub(crate) fn compare(messages: u64) {
    let env = [("LONGSHORE_BENCH_MESSAGES", messages.to_string())];
    let peak = support::run_child(&["--latency", "longshore", "0"], &env)[0];
    let rate = peak / 2.0;
    let rounds: usize = std::env::var("LONGSHORE_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let mut runs: [Vec<Vec<f64>>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for turn in 0..2 {
            let at = (turn + round) % 2;
            let imp = ["longshore", "chunked"][at];
            runs[at].push(support::run_child(&["--latency", imp, &rate.to_string()], &env));
        }
    }
    let of = |at: usize, field: usize| support::median(runs[at].iter().map(|v| v[field]).collect());
    println!(
        "BENCH case=latency rate={rate:.0} peak_msgs_per_s={peak:.0} msgs_per_s={:.0} p50_us={:.0} p99_us={:.0} \
         chunked_msgs_per_s={:.0} chunked_p50_us={:.0} chunked_p99_us={:.0} rounds={rounds} messages={messages}",
        of(0, 0),
        of(0, 1),
        of(0, 2),
        of(1, 0),
        of(1, 1),
        of(1, 2),
    );
}

/// One run in this process: `messages` arriving at `rate` a second (0: as fast as they
/// can be sent) through longshore or the chunked pipeline. The arrivals start once the
/// pipeline runs.
pub(crate) fn run(longshore: bool, messages: u64, rate: f64) -> Measured {
    let runtime = support::runtime();
    let samples = Arc::new(Samples::default());
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut arrivals = None;
    let mut started = None;
    let start = || {
        started = Some(Instant::now());
        arrivals = Some(std::thread::spawn(move || arrive(&tx, messages, rate)));
    };
    let done = runtime.block_on(async {
        if longshore {
            longshore_pipeline(rx, samples.clone(), start).await
        } else {
            chunked_pipeline(rx, samples.clone(), start).await
        }
    });
    let elapsed = started.expect("arrivals started").elapsed();
    arrivals
        .expect("arrivals started")
        .join()
        .expect("the arrival thread ends");
    assert_eq!(done, messages, "every message acknowledged");
    Measured {
        msgs_per_s: messages as f64 / elapsed.as_secs_f64(),
        p50_us: samples.percentile(0.50),
        p99_us: samples.percentile(0.99),
    }
}

/// Sends `messages`, at `rate` a second in a burst every [`TICK`] of what is due, or
/// (`rate` 0) in bursts of [`CHUNK`] as fast as the queue takes them. In the open loop a
/// message's arrival is the time it was due, not the time it was sent: a thread that
/// woke late does not hide the wait (coordinated omission).
fn arrive(tx: &mpsc::Sender<Burst>, messages: u64, rate: f64) {
    let start = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let due = if rate > 0.0 {
            ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(messages)
        } else {
            (sent + CHUNK as u64).min(messages)
        };
        let now = Instant::now();
        let due_at = |n: u64| match rate > 0.0 {
            true => start + Duration::from_secs_f64(n as f64 / rate),
            false => now,
        };
        let burst: Burst = (sent..due)
            .map(|n| Arrival {
                n,
                at: n.is_multiple_of(SAMPLE_EVERY).then(|| due_at(n)),
            })
            .collect();
        sent = due;
        if rate == 0.0 {
            tx.blocking_send(burst).expect("the pipeline takes every message");
            continue;
        }
        if burst.is_empty() {
            std::thread::sleep(TICK);
            continue;
        }
        if let Err(error) = tx.try_send(burst) {
            panic!(
                "the open loop could not hand over a burst ({error}): the pipeline fell behind the arrivals"
            );
        }
        std::thread::sleep(TICK);
    }
}

// ---------------------------------------------------------------- longshore

/// The arrivals as a source: its messages carry their arrival time as metadata.
struct Arrivals {
    /// The bursts, and what is left of the one being taken.
    queue: tokio::sync::Mutex<(mpsc::Receiver<Burst>, std::vec::IntoIter<Arrival>)>,
    acked: Arc<Acked>,
}

/// Times each sampled message at its acknowledgement, and counts them.
struct Acked {
    samples: Arc<Samples>,
    successful: AtomicU64,
}

impl Source for Arrivals {
    type Data = u64;
    type Metadata = Option<Instant>;
    type Acknowledger = Arc<Acked>;

    fn acknowledger(&self) -> Arc<Acked> {
        self.acked.clone()
    }

    async fn receive(
        &self,
        demand: NonZeroUsize,
    ) -> Result<Option<Vec<Message<u64, Option<Instant>>>>, BoxError> {
        let mut queue = self.queue.lock().await;
        let (bursts, left) = &mut *queue;
        if left.len() == 0 {
            // Cancel safe: a burst is either taken whole or left in the queue.
            match bursts.recv().await {
                Some(burst) => *left = burst.into_iter(),
                None => return Ok(None),
            }
        }
        Ok(Some(
            left.by_ref()
                .take(demand.get())
                .map(|a| Message::with_metadata(a.n, a.at))
                .collect(),
        ))
    }
}

impl Acknowledger<Option<Instant>> for Acked {
    async fn ack<T: Send + 'static>(
        &self,
        successful: Vec<Message<T, Option<Instant>>>,
        failed: Vec<Message<T, Option<Instant>>>,
    ) {
        assert!(failed.is_empty(), "nothing fails");
        for at in successful.iter().filter_map(|m| *m.metadata()) {
            self.samples.record(at);
        }
        self.successful
            .fetch_add(successful.len() as u64, Ordering::Relaxed);
    }
}

struct Touch;

impl Handler for Touch {
    type Item = u64;
    type Metadata = Option<Instant>;

    async fn handle_message(&self, message: &mut Message<u64, Option<Instant>>) -> Result<(), BoxError> {
        black_box(message.data());
        Ok(())
    }
}

async fn longshore_pipeline(rx: mpsc::Receiver<Burst>, samples: Arc<Samples>, start: impl FnOnce()) -> u64 {
    let acked = Arc::new(Acked {
        samples,
        successful: AtomicU64::new(0),
    });
    let source = Arrivals {
        queue: tokio::sync::Mutex::new((rx, Vec::new().into_iter())),
        acked: acked.clone(),
    };
    let pipeline = Pipeline::builder(source, Touch)
        .processors(Processors::new(PROCESSORS))
        .start()
        .expect("valid");
    start();
    pipeline.wait().await.expect("the pipeline ends cleanly");
    acked.successful.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------- chunked

/// The chunked baseline fed by the arrivals: each burst in chunks of at most [`CHUNK`],
/// round-robin to the processors, each acknowledging its chunk.
async fn chunked_pipeline(mut rx: mpsc::Receiver<Burst>, samples: Arc<Samples>, start: impl FnOnce()) -> u64 {
    let acked = Arc::new(AtomicU64::new(0));
    let mut processors = Vec::new();
    let mut txs = Vec::new();
    for _ in 0..PROCESSORS {
        let (tx, mut chunks) = mpsc::channel::<Vec<Arrival>>(4);
        txs.push(tx);
        let (acked, samples) = (acked.clone(), samples.clone());
        processors.push(tokio::spawn(async move {
            while let Some(chunk) = chunks.recv().await {
                chunk.iter().for_each(|a| {
                    black_box(a.n);
                });
                for at in chunk.iter().filter_map(|a| a.at) {
                    samples.record(at);
                }
                acked.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    start();
    let mut next = 0;
    while let Some(burst) = rx.recv().await {
        let mut burst = burst.into_iter();
        loop {
            let chunk: Vec<Arrival> = burst.by_ref().take(CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            txs[next % PROCESSORS].send(chunk).await.expect("processors run");
            next += 1;
        }
    }
    drop(txs);
    for processor in processors {
        processor.await.expect("a processor ends");
    }
    acked.load(Ordering::Relaxed)
}
