//! Property: over random topologies, random handler errors and panics, retries and dead
//! letters, every message is acknowledged exactly once with the right status, final
//! failures reach `handle_failed` and the dead-letter destination exactly once, and where
//! `partition_by` is set each key's messages are handled in the order sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use longshore::testing::TestSource;
use longshore::{
    BatchInfo, Batcher, BoxError, DeadLetter, FailureKind, Handler, Message, Pipeline, Processors,
    RetryPolicy, Status,
};
use proptest::prelude::*;

mod common;

/// What the handler does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ok,
    /// Fails its first n attempts in `handle_message`.
    Flaky(u32),
    Error,
    Panic,
    /// `handle_message` succeeds; the batch holding it fails it.
    FailInBatch,
    /// Routed to a batcher that does not exist.
    UnknownBatcher,
}

#[derive(Debug, Clone)]
struct Item {
    seq: usize,
    key: u64,
    fate: Fate,
    /// Index of the batcher to route to, modulo the batchers configured.
    batcher: usize,
}

#[derive(Debug)]
struct Recorder {
    batchers: Vec<String>,
    /// Per key, the sequence numbers in the order `handle_message` saw them.
    handled: Mutex<HashMap<u64, Vec<usize>>>,
    /// Sequence numbers given to `handle_failed`.
    failed_seen: Mutex<Vec<usize>>,
    /// Batches seen: (batcher, key, all messages' keys).
    batches: Mutex<Vec<(String, Vec<u64>, u64)>>,
}

impl Handler for Recorder {
    type Item = Item;
    type Metadata = Item;

    async fn handle_message(&self, message: &mut Message<Item, Item>) -> Result<(), BoxError> {
        let item = message.data().clone();
        self.handled
            .lock()
            .unwrap()
            .entry(item.key)
            .or_default()
            .push(item.seq);
        if !self.batchers.is_empty() {
            message.put_batch_key(item.key);
            let name = self.batchers[item.batcher % self.batchers.len()].clone();
            message.put_batcher(name);
        }
        match item.fate {
            Fate::Flaky(n) if message.attempt() <= n => Err(format!("injected flake {}", item.seq).into()),
            Fate::Error => Err(format!("injected error {}", item.seq).into()),
            Fate::Panic => panic!("injected panic {}", item.seq),
            Fate::UnknownBatcher if !self.batchers.is_empty() => {
                message.put_batcher("nowhere");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn handle_batch(
        &self,
        batch: &mut [Message<Item, Item>],
        info: &BatchInfo,
    ) -> Result<(), BoxError> {
        let keys = batch.iter().map(|m| m.data().key).collect();
        let key = match info.batch_key {
            longshore::BatchKey::Int(key) => key,
            ref other => panic!("unexpected batch key {other:?}"),
        };
        self.batches
            .lock()
            .unwrap()
            .push((info.batcher.to_string(), keys, key));
        for message in batch.iter_mut() {
            if message.data().fate == Fate::FailInBatch {
                message.fail("injected batch failure");
            }
        }
        Ok(())
    }

    async fn handle_failed(&self, messages: &mut [Message<Item, Item>]) {
        let mut seen = self.failed_seen.lock().unwrap();
        seen.extend(messages.iter().map(|m| m.data().seq));
    }
}

#[derive(Debug, Clone)]
struct Topology {
    processors: usize,
    max_demand: usize,
    partitioned: bool,
    batchers: Vec<(usize, u64, usize)>,
    items: Vec<(u64, Fate, usize)>,
    max_attempts: u32,
    dead_letter: bool,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        6 => Just(Fate::Ok),
        2 => (1u32..=3).prop_map(Fate::Flaky),
        1 => Just(Fate::Error),
        1 => Just(Fate::Panic),
        1 => Just(Fate::FailInBatch),
        1 => Just(Fate::UnknownBatcher),
    ]
}

fn topology() -> impl Strategy<Value = Topology> {
    (
        1usize..=8,
        2usize..=40,
        any::<bool>(),
        prop::collection::vec((1usize..=20, 1u64..=15, 1usize..=3), 0..=3),
        prop::collection::vec((0u64..6, fate(), 0usize..3), 0..300),
        1u32..=3,
        any::<bool>(),
    )
        .prop_map(
            |(processors, max_demand, partitioned, batchers, items, max_attempts, dead_letter)| Topology {
                processors,
                max_demand,
                partitioned,
                batchers,
                items,
                max_attempts,
                dead_letter,
            },
        )
}

fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m.starts_with("injected"));
            if !injected {
                default(info);
            }
        }));
    });
}

async fn run(topology: Topology) {
    let names: Vec<String> = (0..topology.batchers.len()).map(|i| format!("b{i}")).collect();
    let recorder = Arc::new(Recorder {
        batchers: names.clone(),
        handled: Mutex::default(),
        failed_seen: Mutex::default(),
        batches: Mutex::default(),
    });
    let (source, sender) = TestSource::new();
    let mut builder = Pipeline::builder(source, recorder.clone()).processors(
        Processors::new(topology.processors)
            .max_demand(topology.max_demand)
            .min_demand(topology.max_demand / 2),
    );
    if topology.partitioned {
        builder = builder.partition_by(|m: &Message<Item, Item>| m.data().key);
    }
    for (name, &(size, timeout_ms, concurrency)) in names.iter().zip(&topology.batchers) {
        builder = builder.batcher(
            Batcher::new(name.clone())
                .batch_size(size)
                .batch_timeout(Duration::from_millis(timeout_ms))
                .concurrency(concurrency),
        );
    }
    let retry = RetryPolicy::new(topology.max_attempts)
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(4))
        .jitter(0.5);
    builder = builder.retry(retry);
    let dead_letters = Arc::new(DeadLetters::default());
    if topology.dead_letter {
        builder = builder.dead_letter(dead_letters.clone());
    }
    let pipeline = builder.start().expect("valid topology");

    let items: Vec<Item> = topology
        .items
        .iter()
        .enumerate()
        .map(|(seq, &(key, fate, batcher))| Item {
            seq,
            key,
            fate,
            batcher,
        })
        .collect();
    let messages = items
        .iter()
        .map(|item| Message::with_metadata(item.clone(), item.clone()));
    let outcomes = sender.test_messages(messages.collect()).await;
    drop(sender);
    let summary = tokio::time::timeout(Duration::from_secs(10), pipeline.wait())
        .await
        .expect("pipeline stops once its source is exhausted")
        .expect("the pipeline ends cleanly");

    // Exactly once: one outcome per message (a second ack panics in the test acknowledger).
    assert_eq!(outcomes.len(), items.len());
    assert_eq!(summary.received as usize, items.len());
    assert_eq!((summary.successful + summary.failed) as usize, items.len());

    let has_batchers = !names.is_empty();
    let mut expected_failed = Vec::new();
    for (item, outcome) in items.iter().zip(&outcomes) {
        assert_eq!(outcome.message.metadata().seq, item.seq);
        assert_eq!(outcome.data::<Item>().map(|data| data.seq), Some(item.seq));
        let should_fail = match item.fate {
            Fate::Ok => false,
            Fate::Flaky(n) => n >= topology.max_attempts,
            Fate::Error | Fate::Panic => true,
            Fate::FailInBatch | Fate::UnknownBatcher => has_batchers,
        };
        assert_eq!(
            outcome.successful,
            !should_fail,
            "item {item:?}: {:?}",
            outcome.message.status()
        );
        assert_eq!(outcome.successful, outcome.message.is_ok());
        if let Status::Failed(failure) = outcome.message.status() {
            let kind = match item.fate {
                Fate::Panic => FailureKind::Panic,
                Fate::UnknownBatcher => FailureKind::Routing,
                _ => FailureKind::Error,
            };
            assert_eq!(failure.kind(), kind, "item {item:?}");
            expected_failed.push(item.seq);
        }
    }

    // handle_failed saw each failed message exactly once.
    let mut failed_seen = recorder.failed_seen.lock().unwrap().clone();
    failed_seen.sort_unstable();
    assert_eq!(failed_seen, expected_failed);

    // The dead-letter destination took each final failure exactly once.
    if topology.dead_letter {
        let mut dead = dead_letters.0.lock().unwrap().clone();
        dead.sort_unstable();
        assert_eq!(dead, expected_failed);
    }

    // Batches hold one key each, within size, and only messages that reached batchers.
    let batches = recorder.batches.lock().unwrap();
    let mut batched = 0;
    for (batcher, keys, key) in batches.iter() {
        let index: usize = batcher[1..].parse().unwrap();
        assert!(keys.len() <= topology.batchers[index].0, "batch over its size");
        assert!(keys.iter().all(|k| k == key), "a batch mixes keys");
        batched += keys.len();
    }
    // Every message that passed its processor was batched, once per batch attempt.
    let expected_batched: usize = if has_batchers {
        items
            .iter()
            .map(|i| match i.fate {
                Fate::Ok => 1,
                Fate::Flaky(n) if n < topology.max_attempts => 1,
                Fate::FailInBatch => topology.max_attempts as usize,
                _ => 0,
            })
            .sum()
    } else {
        0
    };
    if topology.partitioned {
        // Ordered: the successful messages behind a batch retry are handled again with it.
        assert!(batched >= expected_batched, "{batched} < {expected_batched}");
    } else {
        assert_eq!(batched, expected_batched);
    }

    // Ordered: per key and batcher, successful messages are acknowledged in the order
    // sent, through batches and their retries alike.
    if topology.partitioned {
        common::assert_finished_in_order(outcomes.iter().filter(|o| o.successful).map(|outcome| {
            let message = &outcome.message;
            let batcher = message.batcher().map(str::to_owned);
            (
                message.metadata().key,
                batcher,
                outcome.acknowledged,
                message.metadata().seq,
            )
        }));
    }

    // Per-key order of handle_message calls.
    if topology.partitioned {
        for (key, seqs) in recorder.handled.lock().unwrap().iter() {
            assert!(
                seqs.windows(2).all(|w| w[0] <= w[1]),
                "key {key} out of order: {seqs:?}"
            );
        }
    }
}

/// Records the sequence numbers it is given.
#[derive(Debug, Default)]
struct DeadLetters(Mutex<Vec<usize>>);

impl DeadLetter<Item> for DeadLetters {
    async fn dead_letter(&self, messages: &mut [Message<(), Item>]) -> Result<(), BoxError> {
        self.0
            .lock()
            .unwrap()
            .extend(messages.iter().map(|m| m.metadata().seq));
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_message_is_acknowledged_exactly_once(topology in topology()) {
        quiet_injected_panics();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(topology));
    }
}
