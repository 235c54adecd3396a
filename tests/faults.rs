//! Failures of user callbacks and of the pipeline's own machinery: a panicking
//! `partition_by` fails its message, never the producer; a panicking acknowledger or a
//! source that can no longer deliver stops the pipeline with an error, never a clean
//! summary and never a hang; at shutdown, what waits for a retry is released at once, and
//! at a missed deadline every message is either acknowledged (finished) or handed back.

mod common;

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longshore::{Acknowledger, BoxError, Handler, Message, Pipeline, Processors, RetryPolicy, Source};
use tokio::time::Instant;

/// Numbers from a range; records what is acknowledged and released.
struct Numbers {
    next: AtomicUsize,
    end: usize,
    ledger: Arc<Ledger>,
    /// Once set, `liveness` reports the source dead.
    dead: Arc<AtomicBool>,
}

#[derive(Default)]
struct Ledger {
    successful: Mutex<Vec<usize>>,
    failed: Mutex<Vec<usize>>,
    released: Mutex<Vec<usize>>,
    /// The acknowledger panics on this message.
    panic_on: Option<usize>,
    /// Whether it asks to hear of each message as soon as it is done.
    each: bool,
}

impl Acknowledger<usize> for Ledger {
    async fn ack<T: Send + 'static>(
        &self,
        successful: Vec<Message<T, usize>>,
        failed: Vec<Message<T, usize>>,
    ) {
        if let Some(bad) = self.panic_on {
            assert!(
                successful.iter().all(|m| *m.metadata() != bad),
                "injected acknowledger panic"
            );
        }
        self.successful
            .lock()
            .unwrap()
            .extend(successful.iter().map(|m| *m.metadata()));
        self.failed
            .lock()
            .unwrap()
            .extend(failed.iter().map(|m| *m.metadata()));
    }

    fn acknowledges_each(&self) -> bool {
        self.each
    }

    async fn release<T: Send + 'static>(&self, messages: Vec<Message<T, usize>>) {
        self.released
            .lock()
            .unwrap()
            .extend(messages.iter().map(|m| *m.metadata()));
    }
}

impl Numbers {
    fn new(end: usize, ledger: Ledger) -> (Self, Arc<Ledger>, Arc<AtomicBool>) {
        let ledger = Arc::new(ledger);
        let dead = Arc::new(AtomicBool::new(false));
        let source = Numbers {
            next: AtomicUsize::new(0),
            end,
            ledger: ledger.clone(),
            dead: dead.clone(),
        };
        (source, ledger, dead)
    }
}

impl Source for Numbers {
    type Data = usize;
    type Metadata = usize;
    type Acknowledger = Arc<Ledger>;

    fn acknowledger(&self) -> Arc<Ledger> {
        self.ledger.clone()
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<usize, usize>>>, BoxError> {
        let start = self.next.fetch_add(demand.get(), Ordering::SeqCst).min(self.end);
        let end = (start + demand.get()).min(self.end);
        if start == end && self.end == usize::MAX {
            std::future::pending::<()>().await;
        }
        Ok((start < end).then(|| (start..end).map(|n| Message::with_metadata(n, n)).collect()))
    }

    fn liveness(&self) -> Result<(), BoxError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err("its poll thread is gone".into());
        }
        Ok(())
    }
}

/// Fails message 7 on every attempt.
struct FailSeven;

impl Handler for FailSeven {
    type Item = usize;
    type Metadata = usize;
    async fn handle_message(&self, message: &mut Message<usize, usize>) -> Result<(), BoxError> {
        if *message.data() == 7 {
            return Err("seven never works".into());
        }
        Ok(())
    }
}

fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|m| m.contains("injected"))
                || info
                    .payload()
                    .downcast_ref::<String>()
                    .is_some_and(|m| m.contains("injected"));
            if !injected {
                default(info);
            }
        }));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_partition_by_fails_its_message_and_the_pipeline_goes_on() {
    quiet_injected_panics();
    let (source, ledger, _) = Numbers::new(100, Ledger::default());
    let pipeline = Pipeline::builder(source, FailSeven)
        .processors(Processors::new(2))
        .partition_by(|m: &Message<usize, usize>| {
            assert!(*m.data() != 42, "injected partition_by panic");
            *m.data() as u64
        })
        .start()
        .unwrap();
    let outcome = format!("{:?}", pipeline.wait().await);
    assert!(outcome.starts_with("Ok("), "{outcome}");
    let mut failed = ledger.failed.lock().unwrap().clone();
    failed.sort_unstable();
    assert_eq!(failed, [7, 42]);
    assert_eq!(ledger.successful.lock().unwrap().len(), 98);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_acknowledger_ends_the_pipeline_with_an_error() {
    quiet_injected_panics();
    let ledger = Ledger {
        panic_on: Some(500),
        ..Ledger::default()
    };
    // An endless source: without the error, the pipeline would run forever.
    let (source, _, _) = Numbers::new(usize::MAX, ledger);
    let pipeline = Pipeline::builder(source, FailSeven)
        .processors(Processors::new(2))
        .shutdown_deadline(Duration::from_secs(5))
        .start()
        .unwrap();
    // The fault stops the pipeline by itself, awaited or not.
    let stop = pipeline.stop_token();
    tokio::time::timeout(Duration::from_secs(30), stop.cancelled())
        .await
        .expect("the failed pipeline stops fetching");
    let outcome = tokio::time::timeout(Duration::from_secs(30), pipeline.wait())
        .await
        .expect("the pipeline stops by itself");
    let outcome = format!("{outcome:?}");
    assert!(
        outcome.contains("Failed") && outcome.contains("the acknowledger panicked"),
        "{outcome}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_can_no_longer_deliver_ends_the_pipeline_with_its_cause() {
    let server = longshore::metrics::MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (source, ledger, dead) = Numbers::new(usize::MAX, Ledger::default());
    let pipeline = Pipeline::builder(source, FailSeven)
        .processors(Processors::new(2))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    while stats.get().successful < 1_000 {
        tokio::task::yield_now().await;
    }
    dead.store(true, Ordering::SeqCst);
    let outcome = tokio::time::timeout(Duration::from_secs(30), pipeline.wait())
        .await
        .expect("the pipeline stops by itself");
    match outcome {
        Err(longshore::PipelineError::Failed { cause }) => {
            assert_eq!(cause, "the source can no longer deliver: its poll thread is gone");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(!ledger.successful.lock().unwrap().is_empty());
    // Liveness fails, and stays failed after the pipeline has ended: the process is to
    // be restarted.
    assert_eq!(common::get(server.local_addr(), "/healthz").await.0, 503);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_a_message_waiting_for_its_retry_is_released_at_once() {
    let (source, ledger, _) = Numbers::new(usize::MAX, Ledger::default());
    let pipeline = Pipeline::builder(source, FailSeven)
        .processors(Processors::new(2))
        .partition_by(|m: &Message<usize, usize>| (*m.data() % 3) as u64)
        .retry(
            RetryPolicy::new(5)
                .initial_backoff(Duration::from_secs(3600))
                .max_backoff(Duration::from_secs(3600)),
        )
        .shutdown_deadline(Duration::from_secs(20))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    while stats.get().retried < 1 {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    let outcome = format!("{:?}", pipeline.shutdown().await);
    assert!(outcome.starts_with("Ok("), "{outcome}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Seven and the messages of its key behind it: released, never acknowledged.
    let released = ledger.released.lock().unwrap().clone();
    assert_eq!(released.first(), Some(&7));
    assert!(released.iter().all(|n| n % 3 == 1), "{released:?}");
    assert!(released.windows(2).all(|w| w[0] < w[1]), "in order: {released:?}");
    let acked: Vec<usize> = ledger.successful.lock().unwrap().clone();
    assert!(acked.iter().all(|n| !released.contains(n)));
    assert!(
        !acked.iter().any(|&n| n > 7 && n % 3 == 1),
        "none of its key passed it"
    );
    assert!(ledger.failed.lock().unwrap().is_empty());
}

/// Takes `handling` per message and `batching` per batch, recording what it finished;
/// fails every message when `fail` is set.
struct Slow {
    handling: Duration,
    batching: Duration,
    fail: bool,
    handled: Mutex<Vec<usize>>,
    batched: Mutex<Vec<usize>>,
}

impl Slow {
    fn new(handling: Duration, batching: Duration) -> Arc<Self> {
        Arc::new(Slow {
            handling,
            batching,
            fail: false,
            handled: Mutex::default(),
            batched: Mutex::default(),
        })
    }
}

impl Handler for Slow {
    type Item = usize;
    type Metadata = usize;
    async fn handle_message(&self, message: &mut Message<usize, usize>) -> Result<(), BoxError> {
        tokio::time::sleep(self.handling).await;
        self.handled.lock().unwrap().push(*message.data());
        if self.fail {
            return Err("always fails".into());
        }
        Ok(())
    }
    async fn handle_batch(
        &self,
        batch: &mut [Message<usize, usize>],
        _: &longshore::BatchInfo,
    ) -> Result<(), BoxError> {
        tokio::time::sleep(self.batching).await;
        self.batched
            .lock()
            .unwrap()
            .extend(batch.iter().map(|m| *m.data()));
        Ok(())
    }
}

fn sorted(numbers: &Mutex<Vec<usize>>) -> Vec<usize> {
    let mut numbers = numbers.lock().unwrap().clone();
    numbers.sort_unstable();
    numbers
}

/// Shuts `pipeline` down after `after`; returns the error, and every message received
/// (they are numbered from 0).
async fn miss_the_deadline(pipeline: Pipeline, after: Duration) -> (longshore::DeadlineExceeded, Vec<usize>) {
    let stats = pipeline.stats();
    tokio::time::sleep(after).await;
    let outcome = pipeline.shutdown().await;
    let Err(longshore::PipelineError::DeadlineExceeded(error)) = outcome else {
        panic!("the deadline passes: {outcome:?}");
    };
    let received = stats.get().received as usize;
    (error, (0..received).collect())
}

/// Every message received is either acknowledged or handed back, never both, never
/// neither.
fn assert_nothing_stranded(ledger: &Ledger, received: &[usize]) {
    let mut settled = sorted(&ledger.successful);
    settled.extend(sorted(&ledger.failed));
    settled.extend(sorted(&ledger.released));
    settled.sort_unstable();
    assert_eq!(settled, received, "acknowledged or released, each once");
}

#[tokio::test(start_paused = true)]
async fn at_a_missed_deadline_what_is_finished_is_acknowledged_and_the_rest_handed_back() {
    // Acknowledged each as it is done (SQS), or with what its chunk finished at the
    // deadline (Kafka): the same messages either way.
    for each in [true, false] {
        let ledger = Ledger {
            each,
            ..Ledger::default()
        };
        let (source, ledger, _) = Numbers::new(usize::MAX, ledger);
        let handler = Slow::new(Duration::from_secs(2), Duration::ZERO);
        // Two processors each on a chunk of four, and two more chunks each queued for them.
        let pipeline = Pipeline::builder(source, handler.clone())
            .processors(Processors::new(2).max_demand(4))
            .max_in_flight(16)
            .shutdown_deadline(Duration::from_secs(5))
            .start()
            .unwrap();
        // The deadline passes at 6.5 s.
        let (error, received) = miss_the_deadline(pipeline, Duration::from_millis(1_500)).await;

        assert_eq!(received.len(), 16);
        assert_eq!(error.stranded, 0, "{error}");
        // Each processor finished three messages of its first chunk (at 2, 4 and 6 s).
        assert_eq!(sorted(&handler.handled).len(), 6);
        let acknowledged_before = if each { 6 } else { 0 };
        assert_eq!(error.in_flight, 16 - acknowledged_before, "each: {each}");
        assert_eq!(
            sorted(&ledger.successful),
            sorted(&handler.handled),
            "each: {each}"
        );
        // The rest, the two cut short and the queued chunks among them, went back at once.
        assert_eq!(ledger.released.lock().unwrap().len(), 10);
        assert_nothing_stranded(&ledger, &received);
    }
}

#[tokio::test(start_paused = true)]
async fn at_a_missed_deadline_batches_waiting_and_filling_are_handed_back() {
    let (source, ledger, _) = Numbers::new(usize::MAX, Ledger::default());
    let handler = Slow::new(Duration::ZERO, Duration::from_secs(3));
    let pipeline = Pipeline::builder(source, handler.clone())
        .processors(Processors::new(2).max_demand(4))
        .batcher(
            longshore::Batcher::new("slow")
                .batch_size(4)
                .batch_timeout(Duration::from_millis(100)),
        )
        .max_in_flight(32)
        .shutdown_deadline(Duration::from_secs(5))
        .start()
        .unwrap();
    let (error, received) = miss_the_deadline(pipeline, Duration::from_secs(1)).await;

    assert_eq!(received.len(), 32);
    assert_eq!(error.stranded, 0, "{error}");
    // One batch processor, three seconds a batch: two batches done by the deadline.
    assert_eq!(sorted(&handler.batched).len(), 8);
    assert_eq!(sorted(&ledger.successful), sorted(&handler.batched));
    assert_eq!(ledger.released.lock().unwrap().len(), 24);
    assert_nothing_stranded(&ledger, &received);
}

/// A dead-letter destination that never takes a message.
struct Unreachable;

impl longshore::DeadLetter<usize> for Unreachable {
    async fn dead_letter(&self, _: &mut [Message<(), usize>]) -> Result<(), BoxError> {
        Err("connection refused".into())
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_write_that_keeps_failing_does_not_hold_the_shutdown() {
    let (source, ledger, _) = Numbers::new(usize::MAX, Ledger::default());
    let handler = Arc::new(Slow {
        fail: true,
        ..Arc::into_inner(Slow::new(Duration::ZERO, Duration::ZERO)).unwrap()
    });
    let pipeline = Pipeline::builder(source, handler)
        .processors(Processors::new(2).max_demand(4))
        .dead_letter(Unreachable)
        .shutdown_deadline(Duration::from_secs(2))
        .start()
        .unwrap();
    let started = Instant::now();
    let (error, received) = miss_the_deadline(pipeline, Duration::from_secs(1)).await;

    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(error.stranded, 0, "{error}");
    // Not dead-lettered, so not acknowledged as failed: delivered again.
    assert!(ledger.failed.lock().unwrap().is_empty());
    assert_eq!(sorted(&ledger.released), received);
}

/// Fails one number; every other succeeds at once.
struct FailOne(usize);

impl Handler for FailOne {
    type Item = usize;
    type Metadata = usize;
    async fn handle_message(&self, message: &mut Message<usize, usize>) -> Result<(), BoxError> {
        if *message.data() == self.0 {
            return Err("poison".into());
        }
        Ok(())
    }
}

/// `poison` fails for good and its dead-letter write never succeeds; the deadline passes
/// during that write. Returns what was acknowledged as successful and what was released.
async fn deadline_in_a_dead_letter_write(poison: usize, each: bool) -> (Vec<usize>, Vec<usize>) {
    let ledger = Ledger {
        each,
        ..Ledger::default()
    };
    let (source, ledger, _) = Numbers::new(usize::MAX, ledger);
    let pipeline = Pipeline::builder(source, FailOne(poison))
        .processors(Processors::new(1).max_demand(8))
        .partition_by(|m: &Message<usize, usize>| (*m.data() % 2) as u64)
        .dead_letter(Unreachable)
        .shutdown_deadline(Duration::from_secs(2))
        .start()
        .unwrap();
    let (error, received) = miss_the_deadline(pipeline, Duration::from_secs(1)).await;
    assert_eq!(error.stranded, 0, "{error}");
    assert_nothing_stranded(&ledger, &received);
    (sorted(&ledger.successful), sorted(&ledger.released))
}

#[tokio::test(start_paused = true)]
async fn at_a_missed_deadline_no_message_is_finished_ahead_of_an_earlier_one_of_its_key() {
    // 3 in the first pass, settled on its own (a source acknowledging each) or with its
    // chunk; 11 in the second pass, settled with its chunk.
    for (poison, each) in [(3, true), (3, false), (11, false)] {
        let (successful, released) = deadline_in_a_dead_letter_write(poison, each).await;
        assert!(released.contains(&poison), "{poison}: {released:?}");
        let passed: Vec<usize> = successful
            .iter()
            .copied()
            .filter(|&n| n % 2 == poison % 2 && n > poison)
            .collect();
        assert!(
            passed.is_empty(),
            "acknowledged after the released {poison} of their key: {passed:?}"
        );
    }
}

/// A decode step that never finishes with message 3 (a schema registry that does not
/// answer), and decodes every other as it is.
struct HangsOnThree;

impl longshore::decode::Decode<usize, usize> for HangsOnThree {
    type Output = usize;

    async fn decode(&self, data: usize, _metadata: &usize) -> Result<usize, BoxError> {
        if data == 3 {
            std::future::pending::<()>().await;
        }
        Ok(data)
    }
}

#[tokio::test(start_paused = true)]
async fn a_decode_step_that_hangs_is_cut_short_at_the_deadline_and_its_chunk_handed_back() {
    let (source, ledger, _) = Numbers::new(usize::MAX, Ledger::default());
    let pipeline = Pipeline::builder(source, FailSeven)
        .decode(HangsOnThree)
        .processors(Processors::new(1).max_demand(4))
        .shutdown_deadline(Duration::from_secs(2))
        .start()
        .unwrap();
    let (error, received) = miss_the_deadline(pipeline, Duration::from_secs(1)).await;

    assert_eq!(error.stranded, 0, "{error}");
    assert_nothing_stranded(&ledger, &received);
    // 0, 1 and 2 were decoded, 3 was being decoded: the chunk goes back whole.
    assert!(ledger.released.lock().unwrap().contains(&3));
}
