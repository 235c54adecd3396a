//! Property: while random messages flow, random changes at random moments (processors and
//! batch processors resized, batch sizes, timeouts and rate limits changed, the pipeline
//! paused and resumed) lose, repeat and reorder nothing: every message is acknowledged
//! exactly once with the right status, each key's messages are handled and finished in
//! the order sent where `partition_by` is set, in flight (counted by the source: received
//! and not yet acknowledged) never exceeds its bound, and no batch is longer than its
//! batcher's size allowed.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longshore::source::{Acknowledger, Source};
use longshore::testing::{TestAcknowledger, TestSource};
use longshore::{
    BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors, RateLimit, RetryPolicy,
};
use proptest::prelude::*;

mod common;

#[derive(Debug, Clone)]
struct Item {
    seq: usize,
    key: u64,
    /// Fails its first `flaky` attempts in `handle_message`.
    flaky: u32,
    /// Handling takes this many microseconds, in `handle_message` and in the batch
    /// holding it.
    work_us: u64,
    /// The first batch holding it fails.
    fails_a_batch: bool,
}

#[derive(Debug, Clone)]
enum Action {
    Processors(usize),
    BatchConcurrency(usize, usize),
    BatchSize(usize, usize),
    BatchTimeout(usize, u64),
    RateLimit(Option<u32>),
    BatcherRateLimit(usize, Option<u32>),
    Pause,
    Resume,
}

#[derive(Debug, Clone)]
struct Case {
    processors: usize,
    partitioned: bool,
    /// Per batcher: size, concurrency.
    batchers: Vec<(usize, usize)>,
    /// `None`: the default bound.
    max_in_flight: Option<usize>,
    items: Vec<(u64, u32, u64, bool)>,
    /// Each after a wait of so many hundreds of microseconds.
    actions: Vec<(u64, Action)>,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (1usize..=8).prop_map(Action::Processors),
        3 => (0usize..2, 1usize..=4).prop_map(|(b, n)| Action::BatchConcurrency(b, n)),
        1 => (0usize..2, 1usize..=30).prop_map(|(b, n)| Action::BatchSize(b, n)),
        1 => (0usize..2, 1u64..=20).prop_map(|(b, ms)| Action::BatchTimeout(b, ms)),
        1 => prop::option::of(2_000u32..=50_000).prop_map(Action::RateLimit),
        1 => (0usize..2, prop::option::of(2_000u32..=50_000)).prop_map(|(b, r)| Action::BatcherRateLimit(b, r)),
        1 => Just(Action::Pause),
        1 => Just(Action::Resume),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..=6,
        any::<bool>(),
        prop::collection::vec((1usize..=20, 1usize..=3), 0..=2),
        prop::option::of(8usize..=64),
        prop::collection::vec(
            (
                0u64..8,
                prop_oneof![8 => Just(0u32), 1 => 1u32..=2],
                0u64..200,
                prop::bool::weighted(0.15),
            ),
            1..400,
        ),
        prop::collection::vec((0u64..30, action()), 1..25),
    )
        .prop_map(
            |(processors, partitioned, batchers, max_in_flight, items, actions)| Case {
                processors,
                partitioned,
                batchers,
                max_in_flight,
                items,
                actions,
            },
        )
}

/// Messages the source handed out and those acknowledged (or released) since: counted
/// by the source itself, not by the pipeline.
#[derive(Debug, Default)]
struct InFlight {
    received: AtomicUsize,
    finished: AtomicUsize,
    /// The bound, from the configuration.
    bound: AtomicUsize,
    most: AtomicUsize,
    /// What broke a property where it was seen: an assert there would be caught as a
    /// handler's panic, failing the message for a retry that may then pass.
    violations: Mutex<Vec<String>>,
}

impl InFlight {
    fn sample(&self) {
        // Received first: an acknowledgement between the two reads makes the figure
        // lower, never higher, than it was.
        let received = self.received.load(Ordering::SeqCst);
        let finished = self.finished.load(Ordering::SeqCst);
        let now = received.saturating_sub(finished);
        let bound = self.bound.load(Ordering::SeqCst);
        if now > bound {
            self.violate(format!("{now} in flight over the bound {bound}"));
        }
        self.most.fetch_max(now, Ordering::Relaxed);
    }

    fn violate(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }
}

/// The test source, counting what it hands out and what comes back.
struct Counting {
    inner: TestSource<Item>,
    in_flight: Arc<InFlight>,
}

impl Source for Counting {
    type Data = Item;
    type Metadata = ();
    type Acknowledger = CountingAck;

    fn acknowledger(&self) -> CountingAck {
        CountingAck {
            inner: self.inner.acknowledger(),
            in_flight: self.in_flight.clone(),
        }
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<Item>>>, BoxError> {
        let received = self.inner.receive(demand).await?;
        if let Some(messages) = &received {
            self.in_flight
                .received
                .fetch_add(messages.len(), Ordering::SeqCst);
            self.in_flight.sample();
        }
        Ok(received)
    }
}

struct CountingAck {
    inner: TestAcknowledger<()>,
    in_flight: Arc<InFlight>,
}

impl Acknowledger<()> for CountingAck {
    async fn ack<T: Send + 'static>(&self, successful: Vec<Message<T>>, failed: Vec<Message<T>>) {
        // Counted before the pipeline takes back its credits, which it does after this.
        self.in_flight
            .finished
            .fetch_add(successful.len() + failed.len(), Ordering::SeqCst);
        self.inner.ack(successful, failed).await;
    }

    async fn release<T: Send + 'static>(&self, messages: Vec<Message<T>>) {
        self.in_flight
            .finished
            .fetch_add(messages.len(), Ordering::SeqCst);
        self.inner.release(messages).await;
    }
}

#[derive(Debug, Default)]
struct Recorder {
    batchers: Vec<String>,
    /// Per key, the sequence numbers in the order `handle_message` saw them.
    handled: Mutex<HashMap<u64, Vec<usize>>>,
    in_flight: Arc<InFlight>,
    /// Per batcher, the largest size set so far: a batch cut under it may be as long.
    largest_size: Mutex<HashMap<String, usize>>,
    /// Items whose batch failed once.
    failed_a_batch: Mutex<HashSet<usize>>,
}

impl Handler for Recorder {
    type Item = Item;
    type Metadata = ();

    async fn handle_message(&self, message: &mut Message<Item>) -> Result<(), BoxError> {
        self.in_flight.sample();
        let item = message.data().clone();
        self.handled
            .lock()
            .unwrap()
            .entry(item.key)
            .or_default()
            .push(item.seq);
        if item.work_us > 0 {
            tokio::time::sleep(Duration::from_micros(item.work_us)).await;
        }
        if message.attempt() <= item.flaky {
            return Err("flaky".into());
        }
        if !self.batchers.is_empty() {
            let batcher = &self.batchers[item.seq % self.batchers.len()];
            message.put_batcher(batcher.clone());
            message.put_batch_key(item.key.to_string());
        }
        Ok(())
    }

    async fn handle_batch(&self, messages: &mut [Message<Item>], info: &BatchInfo) -> Result<(), BoxError> {
        self.in_flight.sample();
        let largest = self.largest_size.lock().unwrap()[&*info.batcher];
        if messages.len() > largest {
            self.in_flight.violate(format!(
                "a batch of {} from {} whose size was never above {largest}",
                messages.len(),
                info.batcher
            ));
        }
        let work = messages.iter().map(|m| m.data().work_us).max().unwrap_or(0);
        tokio::time::sleep(Duration::from_micros(work)).await;
        let mut failed = self.failed_a_batch.lock().unwrap();
        // Every such item counts as failed once, not only the first.
        let firsts = messages
            .iter()
            .filter(|m| m.data().fails_a_batch && failed.insert(m.data().seq))
            .count();
        if firsts > 0 {
            return Err("a batch failing once".into());
        }
        Ok(())
    }
}

async fn run(case: Case) {
    let names: Vec<String> = (0..case.batchers.len()).map(|i| format!("b{i}")).collect();
    let recorder = Arc::new(Recorder {
        batchers: names.clone(),
        ..Recorder::default()
    });
    let (source, sender) = TestSource::new();
    let source = Counting {
        inner: source,
        in_flight: recorder.in_flight.clone(),
    };
    // The bound as documented: each processor's demand (8) and its next fetch (8 - 4),
    // and per batcher one batch filling and one per batch processor.
    let bound = case.max_in_flight.unwrap_or(
        case.processors * (2 * 8 - 4)
            + case
                .batchers
                .iter()
                .map(|(size, n)| size * (n + 1))
                .sum::<usize>(),
    );
    recorder.in_flight.bound.store(bound, Ordering::SeqCst);
    for (name, &(size, _)) in names.iter().zip(&case.batchers) {
        recorder.largest_size.lock().unwrap().insert(name.clone(), size);
    }
    let mut builder = Pipeline::builder(source, recorder.clone())
        .processors(Processors::new(case.processors).max_demand(8))
        // Enough for a flaky message's retries and its batch's.
        .retry(
            RetryPolicy::new(4)
                .initial_backoff(Duration::from_millis(2))
                .max_backoff(Duration::from_millis(8)),
        );
    if let Some(limit) = case.max_in_flight {
        builder = builder.max_in_flight(limit);
    }
    if case.partitioned {
        builder = builder.partition_by(|m: &Message<Item>| m.data().key);
    }
    for (name, &(size, concurrency)) in names.iter().zip(&case.batchers) {
        builder = builder.batcher(
            Batcher::new(name.clone())
                .batch_size(size)
                .batch_timeout(Duration::from_millis(5))
                .concurrency(concurrency),
        );
    }
    let pipeline = builder.start().expect("valid case");
    let (scaling, batching, limits, pause) = (
        pipeline.scaling(),
        pipeline.batching(),
        pipeline.rate_limits(),
        pipeline.pause_switch(),
    );
    let batcher = |index: usize| names.get(index % names.len().max(1)).cloned();
    let actions = case.actions.clone();
    let controller = async {
        for (wait, action) in actions {
            tokio::time::sleep(Duration::from_micros(wait * 100)).await;
            recorder.in_flight.sample();
            match action {
                Action::Processors(n) => scaling.set_processors(n).unwrap(),
                Action::BatchConcurrency(b, n) => {
                    if let Some(name) = batcher(b) {
                        scaling.set_batch_concurrency(&name, n).unwrap();
                    }
                }
                Action::BatchSize(b, n) => {
                    if let Some(name) = batcher(b) {
                        // Raised first, so that no batch cut under `n` is caught out.
                        let mut largest = recorder.largest_size.lock().unwrap();
                        let largest = largest.get_mut(&name).unwrap();
                        *largest = (*largest).max(n);
                        batching.set_batch_size(&name, n).unwrap();
                    }
                }
                Action::BatchTimeout(b, ms) => {
                    if let Some(name) = batcher(b) {
                        batching
                            .set_batch_timeout(&name, Duration::from_millis(ms))
                            .unwrap();
                    }
                }
                Action::RateLimit(rate) => limits.set(rate.map(RateLimit::per_second)).unwrap(),
                Action::BatcherRateLimit(b, rate) => {
                    if let Some(name) = batcher(b) {
                        limits
                            .set_batcher(&name, rate.map(RateLimit::per_second))
                            .unwrap();
                    }
                }
                Action::Pause => pause.pause(),
                Action::Resume => pause.resume(),
            }
        }
        // Left running, so that it drains.
        pause.resume();
        limits.set(None).unwrap();
        for name in &names {
            limits.set_batcher(name, None).unwrap();
        }
    };
    let items: Vec<Item> = case
        .items
        .iter()
        .enumerate()
        .map(|(seq, &(key, flaky, work_us, fails_a_batch))| Item {
            seq,
            key,
            flaky,
            work_us,
            fails_a_batch,
        })
        .collect();
    let ((), outcomes) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(controller, sender.test_batch(items.clone()))
    })
    .await
    .expect("every message is acknowledged");
    drop(sender);
    let summary = tokio::time::timeout(Duration::from_secs(20), pipeline.wait())
        .await
        .expect("the pipeline stops once its source is exhausted")
        .expect("the pipeline ends cleanly");

    // Exactly once: one outcome per message (a second acknowledgement panics in the test
    // acknowledger), each successful (every flaky message succeeds within its attempts).
    assert_eq!(outcomes.len(), items.len());
    assert_eq!(summary.received as usize, items.len());
    assert_eq!(summary.successful as usize, items.len());
    for (item, outcome) in items.iter().zip(&outcomes) {
        assert!(
            outcome.successful,
            "item {item:?}: {:?}",
            outcome.message.status()
        );
        assert_eq!(outcome.data::<Item>().map(|data| data.seq), Some(item.seq));
    }
    let violations = recorder.in_flight.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:?}");
    assert!(
        recorder.in_flight.most.load(Ordering::Relaxed) > 0,
        "the sample saw messages"
    );
    assert_eq!(
        recorder.in_flight.received.load(Ordering::SeqCst),
        recorder.in_flight.finished.load(Ordering::SeqCst),
        "every message received came back"
    );

    if case.partitioned {
        // Handled in order per key (a retry repeats a sequence number, never goes back).
        for (key, seqs) in recorder.handled.lock().unwrap().iter() {
            assert!(
                seqs.windows(2).all(|w| w[0] <= w[1]),
                "key {key} handled out of order: {seqs:?}"
            );
        }
        // Finished in order per key and batcher.
        common::assert_finished_in_order(items.iter().zip(&outcomes).map(|(item, outcome)| {
            let batcher = outcome.message.batcher().map(str::to_owned);
            (item.key, batcher, outcome.acknowledged, item.seq)
        }));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn changes_at_random_moments_lose_repeat_and_reorder_nothing(case in case()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(case));
    }
}
