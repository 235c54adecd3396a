//! Failures of user callbacks and of the pipeline's own machinery: a panicking
//! `partition_by` fails its message, never the producer; a panicking acknowledger or a
//! source that can no longer deliver stops the pipeline with an error, never a clean
//! summary and never a hang; at shutdown, what waits for a retry is released at once.

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
}

impl Acknowledger<usize> for Ledger {
    async fn ack(&self, successful: Vec<Message<usize>>, failed: Vec<Message<usize>>) {
        if let Some(bad) = self.panic_on {
            assert!(
                successful.iter().all(|m| *m.data() != bad),
                "injected acknowledger panic"
            );
        }
        self.successful
            .lock()
            .unwrap()
            .extend(successful.iter().map(|m| *m.data()));
        self.failed
            .lock()
            .unwrap()
            .extend(failed.iter().map(|m| *m.data()));
    }

    async fn release(&self, messages: Vec<Message<usize>>) {
        self.released
            .lock()
            .unwrap()
            .extend(messages.iter().map(|m| *m.data()));
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
    type Item = usize;
    type Acknowledger = Arc<Ledger>;

    fn acknowledger(&self) -> Arc<Ledger> {
        self.ledger.clone()
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<usize>>>, BoxError> {
        let start = self.next.fetch_add(demand.get(), Ordering::SeqCst).min(self.end);
        let end = (start + demand.get()).min(self.end);
        if start == end && self.end == usize::MAX {
            std::future::pending::<()>().await;
        }
        Ok((start < end).then(|| (start..end).map(Message::new).collect()))
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
    async fn handle_message(&self, message: &mut Message<usize>) -> Result<(), BoxError> {
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
        .partition_by(|m: &Message<usize>| {
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
        .partition_by(|m: &Message<usize>| (*m.data() % 3) as u64)
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
