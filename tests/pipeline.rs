//! The core pipeline's guarantees, one test each: demand, bounded in-flight, shutdown
//! drain, deadline, batching, failure isolation, configuration errors.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longshore::source::memory::MemorySource;
use longshore::testing::TestSource;
use longshore::{
    Acknowledger, BatchInfo, BatchKey, BatchTrigger, Batcher, BoxError, BuildError, FailureKind, Handler,
    Message, Pipeline, Processors, Source,
};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// A source with a large backlog that checks, on every call, that it is asked for no
/// more than the pipeline's outstanding demand.
struct CheckedSource {
    next: AtomicUsize,
    backlog: usize,
    limit: usize,
    ledger: Arc<Ledger>,
}

#[derive(Default)]
struct Ledger {
    outstanding: AtomicUsize,
    max_outstanding: AtomicUsize,
    receives: AtomicUsize,
    over_demand: AtomicBool,
}

impl Acknowledger<usize> for Ledger {
    async fn ack<T: Send + 'static>(
        &self,
        successful: Vec<Message<T, usize>>,
        failed: Vec<Message<T, usize>>,
    ) {
        self.outstanding
            .fetch_sub(successful.len() + failed.len(), Ordering::SeqCst);
    }
}

impl Source for CheckedSource {
    type Data = usize;
    type Metadata = usize;
    type Acknowledger = Arc<Ledger>;

    fn acknowledger(&self) -> Arc<Ledger> {
        self.ledger.clone()
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<usize, usize>>>, BoxError> {
        let ledger = &self.ledger;
        ledger.receives.fetch_add(1, Ordering::SeqCst);
        let outstanding = ledger.outstanding.load(Ordering::SeqCst);
        if outstanding + demand.get() > self.limit {
            ledger.over_demand.store(true, Ordering::SeqCst);
        }
        let start = self
            .next
            .fetch_add(demand.get(), Ordering::SeqCst)
            .min(self.backlog);
        let end = (start + demand.get()).min(self.backlog);
        let now = ledger.outstanding.fetch_add(end - start, Ordering::SeqCst) + (end - start);
        ledger.max_outstanding.fetch_max(now, Ordering::SeqCst);
        Ok((start < end).then(|| (start..end).map(|n| Message::with_metadata(n, n)).collect()))
    }
}

/// Yields in every call so that stages interleave, and batches slowly.
struct Slow;

impl Handler for Slow {
    type Item = usize;
    type Metadata = usize;
    async fn handle_message(&self, _: &mut Message<usize, usize>) -> Result<(), BoxError> {
        tokio::task::yield_now().await;
        Ok(())
    }
    async fn handle_batch(&self, _: &mut [Message<usize, usize>], _: &BatchInfo) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_micros(200)).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_is_never_asked_for_more_than_outstanding_demand() {
    // 3 processors × (2 × 10 - 5) + batch 50 × (concurrency 2 + 1) = 195
    let limit = 195;
    let ledger = Arc::new(Ledger::default());
    let source = CheckedSource {
        next: AtomicUsize::new(0),
        backlog: 50_000,
        limit,
        ledger: ledger.clone(),
    };
    let pipeline = Pipeline::builder(source, Slow)
        .processors(Processors::new(3).max_demand(10).min_demand(5))
        .batcher(Batcher::new("slow").batch_size(50).concurrency(2))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    assert_eq!(stats.get().max_in_flight, limit);

    let watcher = tokio::spawn(async move {
        let mut max_seen = 0;
        loop {
            let now = stats.get();
            assert!(
                now.in_flight <= now.max_in_flight,
                "in-flight {} over its bound",
                now.in_flight
            );
            max_seen = max_seen.max(now.in_flight);
            if now.successful == 50_000 {
                return max_seen;
            }
            tokio::task::yield_now().await;
        }
    });
    let summary = pipeline.wait().await.expect("the pipeline ends cleanly");
    let max_seen = watcher.await.unwrap();

    assert_eq!(summary.successful, 50_000);
    assert!(
        !ledger.over_demand.load(Ordering::SeqCst),
        "a receive asked past the demand"
    );
    let max_outstanding = ledger.max_outstanding.load(Ordering::SeqCst);
    assert!(max_outstanding <= limit, "outstanding reached {max_outstanding}");
    // The bound was reached, so the check above was not vacuous.
    assert!(
        max_outstanding > limit / 2,
        "outstanding only reached {max_outstanding}"
    );
    assert!(max_seen > 0);
}

/// Holds every message until the gate opens.
struct Gated(Arc<Semaphore>);

impl Handler for Gated {
    type Item = usize;
    type Metadata = usize;
    async fn handle_message(&self, _: &mut Message<usize, usize>) -> Result<(), BoxError> {
        self.0.acquire().await?.forget();
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn with_zero_demand_the_source_is_not_asked() {
    let ledger = Arc::new(Ledger::default());
    let source = CheckedSource {
        next: AtomicUsize::new(0),
        backlog: 10_000_000,
        limit: 12,
        ledger: ledger.clone(),
    };
    let gate = Arc::new(Semaphore::new(0));
    let pipeline = Pipeline::builder(source, Gated(gate.clone()))
        .processors(Processors::new(2).max_demand(4).min_demand(2))
        .start()
        .unwrap();
    let stats = pipeline.stats();

    // Everything stalls with all demand used (2 × (2 × 4 - 2): each processor's chunk and
    // the next fetched): time passes, nothing more is asked for.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(stats.get().in_flight, 12);
    assert_eq!(stats.get().demand, 0);
    let receives = ledger.receives.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(ledger.receives.load(Ordering::SeqCst), receives);
    assert_eq!(ledger.outstanding.load(Ordering::SeqCst), 12);

    // Messages handled (and acknowledged, chunk by chunk): demand comes back and the
    // source is asked again, up to the bound and no further.
    gate.add_permits(8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(ledger.receives.load(Ordering::SeqCst) > receives);
    assert_eq!(ledger.outstanding.load(Ordering::SeqCst), 12);
    assert_eq!(ledger.max_outstanding.load(Ordering::SeqCst), 12);

    gate.add_permits(1_000_000);
    pipeline.stop_token().cancel();
    gate.close();
    let _ = pipeline.shutdown().await;
    assert!(!ledger.over_demand.load(Ordering::SeqCst));
}

/// A batch as seen by the handler: why it came, its key, its data, when.
type SeenBatch = (BatchTrigger, BatchKey, Vec<usize>, Instant);

/// Records each batch and when it came.
#[derive(Default)]
struct Batches {
    seen: Mutex<Vec<SeenBatch>>,
    first: Notify,
}

impl Handler for Batches {
    type Item = usize;
    type Metadata = ();
    async fn handle_message(&self, message: &mut Message<usize>) -> Result<(), BoxError> {
        let key = if message.data().is_multiple_of(2) {
            "even"
        } else {
            "odd"
        };
        message.put_batch_key(key);
        Ok(())
    }
    async fn handle_batch(&self, batch: &mut [Message<usize>], info: &BatchInfo) -> Result<(), BoxError> {
        let data = batch.iter().map(|m| *m.data()).collect();
        let seen = (info.trigger, info.batch_key.clone(), data, Instant::now());
        self.seen.lock().unwrap().push(seen);
        self.first.notify_one();
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_timeout_flushes_a_partial_batch_and_keys_group_batches() {
    let handler = Arc::new(Batches::default());
    let (source, sender) = MemorySource::channel(16);
    let pipeline = Pipeline::builder(source, handler.clone())
        .processors(Processors::new(2))
        .batcher(
            Batcher::new("db")
                .batch_size(4)
                .batch_timeout(Duration::from_secs(1)),
        )
        .start()
        .unwrap();
    let started = Instant::now();
    for n in [0, 1, 2, 3, 4, 6] {
        sender.send(n).await.unwrap();
    }

    // Four even numbers fill a batch at once; the two odd ones wait for the timeout.
    handler.first.notified().await;
    handler.first.notified().await;
    let seen = handler.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let (trigger, key, mut data, at) = seen[0].clone();
    assert_eq!((trigger, key), (BatchTrigger::Size, BatchKey::from("even")));
    data.sort_unstable();
    assert_eq!(data, vec![0, 2, 4, 6]);
    assert!(at - started < Duration::from_secs(1));
    let (trigger, key, mut data, at) = seen[1].clone();
    assert_eq!((trigger, key), (BatchTrigger::Timeout, BatchKey::from("odd")));
    data.sort_unstable();
    assert_eq!(data, vec![1, 3]);
    assert!(
        at - started >= Duration::from_secs(1),
        "flushed after {:?}",
        at - started
    );
    assert!(
        at - started < Duration::from_millis(1100),
        "flushed after {:?}",
        at - started
    );

    drop(sender);
    assert_eq!(
        pipeline
            .wait()
            .await
            .expect("the pipeline ends cleanly")
            .successful,
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_flushes_and_acknowledges_everything_received() {
    let handler = Arc::new(Batches::default());
    let (source, sender) = MemorySource::channel(64);
    let counts = source.counts();
    // A batch never fills and never times out: only the shutdown flush sends it.
    let pipeline = Pipeline::builder(source, handler.clone())
        .processors(Processors::new(2).max_demand(8).min_demand(4))
        .batcher(
            Batcher::new("db")
                .batch_size(1_000)
                .batch_timeout(Duration::from_secs(900)),
        )
        .start()
        .unwrap();
    let feeder = tokio::spawn(async move {
        for n in 0.. {
            if sender.send(n).await.is_err() {
                return;
            }
        }
    });
    let stats = pipeline.stats();
    while stats.get().received < 300 {
        tokio::task::yield_now().await;
    }

    let summary = pipeline.shutdown().await.expect("drains within the deadline");
    feeder.abort();
    assert!(summary.received >= 300);
    assert_eq!(summary.successful + summary.failed, summary.received);
    assert_eq!(counts.successful(), summary.received);
    let seen = handler.seen.lock().unwrap();
    // A batch may fill (1,000) before the shutdown; what remains is flushed by it.
    assert!(seen
        .iter()
        .all(|(trigger, ..)| matches!(trigger, BatchTrigger::Flush | BatchTrigger::Size)));
    if summary.received % 1_000 != 0 {
        let flushed = seen.iter().any(|(trigger, ..)| *trigger == BatchTrigger::Flush);
        assert!(flushed, "a partial batch was flushed");
    }
    assert_eq!(
        seen.iter().map(|(_, _, data, _)| data.len() as u64).sum::<u64>(),
        summary.received
    );
}

/// Never finishes message 5.
struct Stuck;

impl Handler for Stuck {
    type Item = usize;
    type Metadata = ();
    async fn handle_message(&self, message: &mut Message<usize>) -> Result<(), BoxError> {
        if *message.data() == 5 {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_missed_deadline_leaves_unfinished_messages_unacknowledged() {
    let source = MemorySource::from_iter(0..10usize);
    let counts = source.counts();
    let pipeline = Pipeline::builder(source, Stuck)
        .processors(Processors::new(1).max_demand(1).min_demand(0))
        .shutdown_deadline(Duration::from_secs(5))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    while stats.get().successful < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    let Err(longshore::PipelineError::DeadlineExceeded(error)) = pipeline.shutdown().await else {
        panic!("the deadline passes");
    };
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    // Message 5, and 6: fetched while 5 is handled (`2 × max_demand - min_demand`).
    assert_eq!(error.in_flight, 2);
    assert_eq!(counts.successful(), 5);
    assert_eq!(counts.failed(), 0);
}

/// Fails in every way a handler can.
struct Faulty {
    failed: AtomicUsize,
}

impl Handler for Faulty {
    type Item = usize;
    type Metadata = ();
    async fn prepare_messages(&self, messages: &mut [Message<usize>]) -> Result<(), BoxError> {
        if messages.iter().any(|m| *m.data() == 100) {
            return Err("cannot prepare".into());
        }
        Ok(())
    }
    async fn handle_message(&self, message: &mut Message<usize>) -> Result<(), BoxError> {
        match *message.data() {
            0 => panic!("first message"),
            1 => Err("second message".into()),
            2 => {
                message.fail("third message");
                Ok(())
            }
            _ => Ok(()),
        }
    }
    async fn handle_failed(&self, messages: &mut [Message<usize>]) {
        self.failed.fetch_add(messages.len(), Ordering::SeqCst);
    }
}

/// Enables every span and records nothing: each handler call then runs inside its debug
/// span, on the processor's boxed path.
struct EveryLevel;

impl tracing::Subscriber for EveryLevel {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn errors_and_panics_fail_messages_never_the_stage() {
    errors_and_panics_fail_their_messages().await;
}

#[tokio::test]
async fn a_panic_within_a_debug_span_fails_its_message_too() {
    let _subscriber = tracing::subscriber::set_default(EveryLevel);
    assert!(tracing::level_enabled!(tracing::Level::DEBUG));
    errors_and_panics_fail_their_messages().await;
}

async fn errors_and_panics_fail_their_messages() {
    let (source, sender) = TestSource::new();
    let handler = Arc::new(Faulty {
        failed: AtomicUsize::new(0),
    });
    let pipeline = Pipeline::builder(source, handler.clone())
        .processors(Processors::new(1).max_demand(1).min_demand(0))
        .start()
        .unwrap();

    let outcomes = sender.test_batch((0..10).collect()).await;
    let kinds: Vec<Option<FailureKind>> = outcomes
        .iter()
        .map(|o| match o.message.status() {
            longshore::Status::Ok => None,
            longshore::Status::Failed(failure) => Some(failure.kind()),
        })
        .collect();
    assert_eq!(
        kinds[..3],
        [
            Some(FailureKind::Panic),
            Some(FailureKind::Error),
            Some(FailureKind::Error)
        ]
    );
    assert!(
        kinds[3..].iter().all(Option::is_none),
        "the one processor kept working"
    );
    assert_eq!(
        outcomes[0].message.status().to_string(),
        "failed (panic): first message"
    );

    let outcome = sender.test_message(100).await;
    assert!(!outcome.successful);
    assert_eq!(
        outcome.message.status().to_string(),
        "failed (error): cannot prepare"
    );
    assert_eq!(handler.failed.load(Ordering::SeqCst), 4);

    drop(sender);
    let summary = pipeline.wait().await.expect("the pipeline ends cleanly");
    assert_eq!((summary.successful, summary.failed), (7, 4));
}

/// Routes to batchers but never implements `handle_batch`.
struct NoBatch;

impl Handler for NoBatch {
    type Item = usize;
    type Metadata = ();
    async fn handle_message(&self, message: &mut Message<usize>) -> Result<(), BoxError> {
        if *message.data() == 1 {
            message.put_batcher("elsewhere");
        }
        Ok(())
    }
}

#[tokio::test]
async fn unhandled_batches_and_unknown_batchers_fail_instead_of_passing_silently() {
    let (source, sender) = TestSource::new();
    let pipeline = Pipeline::builder(source, NoBatch)
        .batcher(Batcher::new("db").batch_size(1))
        .start()
        .unwrap();
    let outcomes = sender.test_batch(vec![0, 1]).await;
    assert_eq!(
        outcomes[0].message.status().to_string(),
        "failed (error): handle_batch is not implemented, but batcher `db` is configured"
    );
    assert_eq!(
        outcomes[1].message.status().to_string(),
        "failed (routing): no batcher named `elsewhere`"
    );
    drop(sender);
    pipeline.wait().await.expect("the pipeline ends cleanly");
}

fn build_error(build: impl FnOnce() -> Result<Pipeline, BuildError>) -> String {
    build().unwrap_err().to_string()
}

#[tokio::test]
async fn bad_configuration_fails_at_start_naming_the_field() {
    let source = || MemorySource::from_iter(0..1usize);
    assert_eq!(
        build_error(|| Pipeline::builder(source(), Stuck)
            .processors(Processors::new(0))
            .start()),
        "invalid processors.concurrency: must be at least 1, got 0"
    );
    assert_eq!(
        build_error(|| Pipeline::builder(source(), Stuck)
            .processors(Processors::new(1).max_demand(5).min_demand(5))
            .start()),
        "invalid processors.min_demand: must be below processors.max_demand (5), got 5"
    );
    assert_eq!(
        build_error(|| Pipeline::builder(source(), Stuck)
            .batcher(Batcher::new("db").concurrency(0))
            .start()),
        "invalid batchers.db.concurrency: must be at least 1, got 0"
    );
    assert_eq!(
        build_error(|| Pipeline::builder(source(), Stuck)
            .batcher(Batcher::new("db").batch_timeout(Duration::ZERO))
            .start()),
        "invalid batchers.db.batch_timeout: must be from 1ms to 15m, got 0s"
    );
    assert_eq!(
        build_error(|| Pipeline::builder(source(), Stuck)
            .batcher(Batcher::new("db"))
            .batcher(Batcher::new("db"))
            .start()),
        "invalid batchers.db: a batcher of that name is already configured"
    );
    assert_eq!(
        build_error(|| Pipeline::builder(source(), Stuck)
            .processors(Processors::new(1).max_demand(10).min_demand(5))
            .max_in_flight(3)
            .start()),
        "invalid max_in_flight: must be at least 10, got 3"
    );
    // A bound past what credits count, set or from settings that overflow it.
    assert_eq!(
        build_error(|| Pipeline::builder(source(), Stuck)
            .processors(Processors::new(2).max_demand(usize::MAX))
            .start()),
        format!(
            "invalid max_in_flight: must be at most {}, got {} (set, or from the stages' settings)",
            u32::MAX,
            usize::MAX
        )
    );
    assert!(build_error(|| Pipeline::builder(source(), Stuck)
        .max_in_flight(u32::MAX as usize + 1)
        .start())
    .starts_with("invalid max_in_flight: must be at most"));
    assert_eq!(
        build_error(|| Pipeline::builder(source(), Stuck).source_concurrency(0).start()),
        "invalid source_concurrency: must be at least 1, got 0"
    );
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    let error = Pipeline::builder(MemorySource::from_iter(0..1usize), Stuck)
        .start()
        .unwrap_err();
    assert_eq!(error.field, "runtime");
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Pipeline>();
    send_sync::<Message<String>>();
    send_sync::<MemorySource<String>>();
    send_sync::<longshore::StatsHandle>();
    send_sync::<longshore::testing::TestSender<String>>();
    send_sync::<BuildError>();
}
