//! Order through every stage: with `partition_by` (or an ordered source), a key's
//! messages finish in the order received, through batchers, concurrent batch processors
//! and retries; a configuration that cannot keep that order is refused at start.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longshore::source::memory::MemorySource;
use longshore::{
    Acknowledger, BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors, RetryPolicy, Source,
};

/// (key, seq) messages from a vector; the acknowledger records the order of successes.
struct Recorded {
    items: Mutex<std::vec::IntoIter<(u64, u64)>>,
    acks: Arc<Acks>,
}

#[derive(Default)]
struct Acks {
    successful: Mutex<Vec<(u64, u64)>>,
    failed: Mutex<Vec<(u64, u64)>>,
}

impl Acknowledger<(u64, u64)> for Acks {
    async fn ack(&self, successful: Vec<Message<(u64, u64)>>, failed: Vec<Message<(u64, u64)>>) {
        let mut done = self.successful.lock().unwrap();
        done.extend(successful.iter().map(|m| *m.data()));
        self.failed
            .lock()
            .unwrap()
            .extend(failed.iter().map(|m| *m.data()));
    }
}

impl Source for Recorded {
    type Item = (u64, u64);
    type Acknowledger = Arc<Acks>;

    fn acknowledger(&self) -> Arc<Acks> {
        self.acks.clone()
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<(u64, u64)>>>, BoxError> {
        tokio::task::yield_now().await;
        let mut items = self.items.lock().unwrap();
        let taken: Vec<_> = items.by_ref().take(demand.get()).map(Message::new).collect();
        Ok((!taken.is_empty()).then_some(taken))
    }
}

/// Batches by key; fails the first attempt of every seventh message (and a whole batch
/// now and then), with a batch's others succeeding.
struct Flaky {
    attempts: Mutex<HashMap<(u64, u64), u32>>,
}

impl Handler for Flaky {
    type Item = (u64, u64);

    async fn handle_message(&self, message: &mut Message<(u64, u64)>) -> Result<(), BoxError> {
        let key = message.data().0;
        message.put_batch_key(key);
        Ok(())
    }

    async fn handle_batch(&self, batch: &mut [Message<(u64, u64)>], _: &BatchInfo) -> Result<(), BoxError> {
        // Batches of other keys overtake a waiting one.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut attempts = self.attempts.lock().unwrap();
        let mut whole = false;
        for message in batch.iter_mut() {
            let (key, seq) = *message.data();
            let attempt = attempts.entry((key, seq)).or_default();
            *attempt += 1;
            if seq % 7 == 3 && *attempt == 1 {
                message.fail("first attempt fails");
            }
            whole |= seq % 23 == 5 && *attempt == 1;
        }
        if whole {
            return Err("the whole batch fails once".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_messages_finish_in_order_through_concurrent_batches_and_their_retries() {
    let items: Vec<(u64, u64)> = (0..400u64).map(|seq| (seq % 4, seq)).collect();
    let acks = Arc::new(Acks::default());
    let source = Recorded {
        items: Mutex::new(items.into_iter()),
        acks: acks.clone(),
    };
    let handler = Flaky {
        attempts: Mutex::default(),
    };
    let pipeline = Pipeline::builder(source, handler)
        .processors(Processors::new(3).max_demand(8))
        .partition_by(|m: &Message<(u64, u64)>| m.data().0)
        .batcher(
            Batcher::new("db")
                .batch_size(5)
                .batch_timeout(Duration::from_millis(5))
                .concurrency(4),
        )
        .retry(RetryPolicy::new(3).initial_backoff(Duration::from_millis(5)))
        .start()
        .unwrap();
    let _ = pipeline.wait().await;

    assert!(acks.failed.lock().unwrap().is_empty());
    let done = acks.successful.lock().unwrap();
    assert_eq!(done.len(), 400, "every message finished once");
    let mut by_key: HashMap<u64, Vec<u64>> = HashMap::new();
    for &(key, seq) in done.iter() {
        by_key.entry(key).or_default().push(seq);
    }
    for (key, seqs) in by_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} finished out of order: {seqs:?}"
        );
    }
}

struct Pass;

impl Handler for Pass {
    type Item = u64;
    async fn handle_message(&self, _: &mut Message<u64>) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test]
async fn concurrent_fetches_are_refused_with_an_ordered_pipeline() {
    let error = Pipeline::builder(MemorySource::from_iter(0..10u64), Pass)
        .partition_by(|m: &Message<u64>| *m.data())
        .source_concurrency(2)
        .start()
        .unwrap_err();
    assert_eq!(error.field, "source_concurrency");
    assert!(error.reason.contains("ordered"), "{error}");

    // Unordered, they are fine.
    let pipeline = Pipeline::builder(MemorySource::from_iter(0..10u64), Pass)
        .source_concurrency(2)
        .start()
        .unwrap();
    let _ = pipeline.wait().await;
}
