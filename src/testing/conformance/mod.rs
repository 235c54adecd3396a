//! The source contract as checks any connector runs against its real server.
//!
//! A connector's test implements [`Broker`] over its server (publish messages, open a
//! consumer, ask the server what is still outstanding) and runs [`Conformance::run`].
//! Each check publishes messages of its own, drives the source (directly, or under a real
//! pipeline), and counts only once the server says everything is done: lost messages are
//! measured, never assumed.
//!
//! | check | what it proves |
//! | --- | --- |
//! | [`demand_is_never_exceeded`](Conformance::demand_is_never_exceeded) | `receive` returns at most what was asked for |
//! | [`nothing_is_taken_without_demand`](Conformance::nothing_is_taken_without_demand) | a source asked for nothing holds at most its declared prefetch |
//! | [`each_message_is_acknowledged_once`](Conformance::each_message_is_acknowledged_once) | under a pipeline, every message is acknowledged exactly once, and the server then holds none |
//! | [`a_failed_message_is_tried_again`](Conformance::a_failed_message_is_tried_again) | a failure is retried (in process or by the broker) with a rising attempt, then finished |
//! | [`messages_not_finished_are_released_at_shutdown`](Conformance::messages_not_finished_are_released_at_shutdown) | a shutdown that cuts work short hands every message back, and a new consumer gets them at once |
//! | [`a_consumer_killed_with_sigkill_loses_nothing`](Conformance::a_consumer_killed_with_sigkill_loses_nothing) | a consumer process killed with `kill -9` mid-stream, then started again, loses nothing |
//! | [`the_declared_order_holds`](Conformance::the_declared_order_holds) | with an order declared, one key's messages are handled one at a time, in order, through retries |
//!
//! The `kill -9` check needs a consumer process of the connector's own
//! ([`Broker::consumer`]); the connectors' own kill tests (`connectors/*/tests/kill9.rs`)
//! also bound the duplicates a kill makes, with each connector's own settings.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use longshore::testing::conformance::{Conformance, MemoryBroker};
//!
//! // The in-memory source, checked as any connector is.
//! let report = Conformance::new(MemoryBroker::default()).run().await.unwrap();
//! assert!(report.passed.contains(&"each_message_is_acknowledged_once"));
//! # }
//! ```

mod memory;
mod observed;
mod recorder;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::BoxError;
use crate::message::Message;
use crate::source::{Acknowledger, Plan, Source};
use crate::{Pipeline, PipelineError, Processors, RetryPolicy};

pub use memory::MemoryBroker;
use observed::{Checked, Ledger};
use recorder::{Behaviour, Recorder};

/// One message a check publishes: its id (unique in the run) and its ordering key (a
/// Kafka record key, an SQS FIFO group), which [`Broker::identify`] reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Published {
    /// Unique among everything a run publishes.
    pub id: u64,
    /// The ordering key: messages of one key keep their order where the source declares
    /// one.
    pub key: u64,
}

impl Published {
    /// As text, for a broker whose messages are bytes: `id,key`.
    ///
    /// ```
    /// use longshore::testing::conformance::Published;
    ///
    /// let published = Published { id: 7, key: 3 };
    /// assert_eq!(published.to_text(), "7,3");
    /// assert_eq!(Published::from_text(b"7,3"), published);
    /// ```
    pub fn to_text(&self) -> String {
        format!("{},{}", self.id, self.key)
    }

    /// Reads back what [`to_text`](Self::to_text) wrote.
    ///
    /// # Panics
    ///
    /// On anything else: a check's own data came back changed.
    pub fn from_text(bytes: &[u8]) -> Self {
        let text = std::str::from_utf8(bytes).expect("a published message is text");
        let (id, key) = text.split_once(',').expect("id,key");
        Published {
            id: id.parse().expect("an id"),
            key: key.parse().expect("a key"),
        }
    }
}

/// What a source promises, as its connector declares it for the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Declared {
    /// The most messages the source may take from the server with no demand (Kafka: its
    /// per-partition buffer times the partitions; SQS: none).
    pub prefetch: usize,
    /// Whether messages of one key are delivered and handled in order.
    pub ordered: bool,
    /// Whether a new consumer gets what an earlier one released at once (SQS: visibility
    /// 0; Kafka: never committed). The in-memory source keeps nothing after it stops.
    pub redelivers_released: bool,
}

impl Declared {
    /// A source that takes nothing without demand, keeps no order and hands released
    /// messages to the next consumer.
    pub fn new() -> Self {
        Declared {
            prefetch: 0,
            ordered: false,
            redelivers_released: true,
        }
    }

    /// Sets [`Declared::prefetch`].
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets [`Declared::ordered`].
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// Sets [`Declared::redelivers_released`].
    pub fn redelivers_released(mut self, redelivers: bool) -> Self {
        self.redelivers_released = redelivers;
        self
    }
}

impl Default for Declared {
    fn default() -> Self {
        Declared::new()
    }
}

/// A connector's server, as the checks drive it: implemented by the connector's tests.
pub trait Broker: Send + Sync + 'static {
    /// The source under test.
    type Source: Source;

    /// What the source promises.
    fn declared(&self) -> Declared;

    /// Writes `messages` to the server, in order.
    fn publish(&self, messages: Vec<Published>) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// A new consumer of what was published (the same group, the same queue), as a
    /// service starting would make one.
    fn source(&self) -> impl Future<Output = Result<Self::Source, BoxError>> + Send;

    /// The id and key a message carries, as received.
    fn identify(
        &self,
        message: &Message<<Self::Source as Source>::Data, <Self::Source as Source>::Metadata>,
    ) -> Published;

    /// How many messages `source` holds that it took from the server and were not
    /// acknowledged (SQS: the queue's in-flight count; Kafka: the source's buffered and
    /// handed-out records).
    fn taken(&self, source: &Self::Source) -> impl Future<Output = Result<usize, BoxError>> + Send;

    /// Whether the server holds nothing published and unfinished: the queue empty with
    /// nothing in flight, the group committed to the end of every partition.
    fn settled(&self) -> impl Future<Output = Result<bool, BoxError>> + Send;

    /// A consumer process of the source, for the `kill -9` check: it consumes what was
    /// published (the same group, the same queue) and appends the id of each message it
    /// handled, one per line, to `output`. `None` (the default) when the source has no
    /// process to kill (the in-memory source): the check does not apply.
    ///
    /// It must handle at a pace a kill can land in: the check looks at `output` every
    /// 20 ms, and fails as proving nothing if the process handled everything before it was
    /// killed. Longshore's own consumers wait 20 ms on each batch (of 50; Kafka's, of 100) for
    /// this.
    fn consumer(&self, output: &std::path::Path) -> Option<std::process::Command> {
        let _ = output;
        None
    }
}

/// A check that failed: which, and what it saw.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{check}: {detail}")]
pub struct Violation {
    /// The check's name.
    pub check: &'static str,
    /// What it saw.
    pub detail: String,
}

/// What a run did: the checks passed, and those not run with the declaration that made
/// them not apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Checks that passed.
    pub passed: Vec<&'static str>,
    /// Checks not run, and why (the source's declaration).
    pub not_applicable: Vec<(&'static str, &'static str)>,
    /// Messages handled twice because of the `kill -9` (what the killed consumer had
    /// handled and not yet acknowledged), when that check ran.
    pub duplicates_after_kill: Option<usize>,
}

/// The checks, over one [`Broker`].
#[derive(Debug)]
pub struct Conformance<B> {
    broker: Arc<B>,
    messages: usize,
    timeout: Duration,
    next_id: AtomicU64,
}

type Check = Result<(), Violation>;

impl<B: Broker> Conformance<B>
where
    <B::Source as Source>::Metadata: Sync,
{
    /// Checks over `broker`, with 200 messages per check, each check given 60 s.
    pub fn new(broker: B) -> Self {
        Conformance {
            broker: Arc::new(broker),
            messages: 200,
            timeout: Duration::from_secs(60),
            next_id: AtomicU64::new(0),
        }
    }

    /// How many messages each check publishes (default 200).
    pub fn messages(mut self, messages: usize) -> Self {
        self.messages = messages.max(10);
        self
    }

    /// How long one check may wait for the server (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs every check, in the table's order; stops at the first violation.
    ///
    /// # Errors
    ///
    /// The first [`Violation`].
    pub async fn run(&self) -> Result<Report, Violation> {
        let declared = self.broker.declared();
        let mut report = Report::default();
        self.demand_is_never_exceeded().await?;
        report.passed.push("demand_is_never_exceeded");
        self.nothing_is_taken_without_demand().await?;
        report.passed.push("nothing_is_taken_without_demand");
        self.each_message_is_acknowledged_once().await?;
        report.passed.push("each_message_is_acknowledged_once");
        self.a_failed_message_is_tried_again().await?;
        report.passed.push("a_failed_message_is_tried_again");
        self.messages_not_finished_are_released_at_shutdown().await?;
        report
            .passed
            .push("messages_not_finished_are_released_at_shutdown");
        match self.a_consumer_killed_with_sigkill_loses_nothing().await? {
            Some(duplicates) => {
                report.duplicates_after_kill = Some(duplicates);
                report.passed.push("a_consumer_killed_with_sigkill_loses_nothing");
            }
            None => report.not_applicable.push((
                "a_consumer_killed_with_sigkill_loses_nothing",
                "the source has no consumer process",
            )),
        }
        if declared.ordered {
            self.the_declared_order_holds().await?;
            report.passed.push("the_declared_order_holds");
        } else {
            report
                .not_applicable
                .push(("the_declared_order_holds", "the source declares no order"));
        }
        Ok(report)
    }

    fn publishable(&self, count: usize, keys: u64) -> Vec<Published> {
        let first = self.next_id.fetch_add(count as u64, Ordering::Relaxed);
        (first..first + count as u64)
            .map(|id| Published { id, key: id % keys })
            .collect()
    }

    async fn publish(
        &self,
        check: &'static str,
        count: usize,
        keys: u64,
    ) -> Result<Vec<Published>, Violation> {
        let messages = self.publishable(count, keys);
        self.broker
            .publish(messages.clone())
            .await
            .map_err(|error| violation(check, format!("publishing failed: {error}")))?;
        Ok(messages)
    }

    async fn open(&self, check: &'static str) -> Result<B::Source, Violation> {
        self.broker
            .source()
            .await
            .map_err(|error| violation(check, format!("opening a consumer failed: {error}")))
    }

    /// Waits until the server holds nothing unfinished.
    async fn settle(&self, check: &'static str) -> Check {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.broker.settled().await {
                Ok(true) => return Ok(()),
                Ok(false) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(false) => {
                    return Err(violation(
                        check,
                        format!(
                            "the server still holds unfinished messages after {:?}",
                            self.timeout
                        ),
                    ))
                }
                Err(error) => return Err(violation(check, format!("asking the server failed: {error}"))),
            }
        }
    }

    /// Receives directly with demands of 1, 2, 5, 13 and 50, acknowledging each batch at
    /// once: never more than the demand.
    pub async fn demand_is_never_exceeded(&self) -> Check {
        const CHECK: &str = "demand_is_never_exceeded";
        let published = self.publish(CHECK, self.messages, 1).await?;
        let source = self.open(CHECK).await?;
        self.receive_all(CHECK, &source, &published, self.timeout).await?;
        self.settle(CHECK).await
    }

    /// Receives every message of `published` within `timeout`, with rising demands,
    /// acknowledging each batch as successful, then flushes and shuts the source down.
    async fn receive_all(
        &self,
        check: &'static str,
        source: &B::Source,
        published: &[Published],
        timeout: Duration,
    ) -> Check {
        let plan = Plan {
            max_in_flight: 64,
            dead_letter: false,
            source_concurrency: 1,
            ordered: source.partition_by().is_some(),
        };
        source
            .prepare(&plan)
            .map_err(|error| violation(check, format!("the source refused a plain setup: {error}")))?;
        let acknowledger = source.acknowledger();
        let wanted: HashSet<u64> = published.iter().map(|p| p.id).collect();
        let mut seen = HashSet::new();
        let deadline = Instant::now() + timeout;
        for demand in [1usize, 2, 5, 13, 50].into_iter().cycle() {
            if wanted.is_subset(&seen) {
                break;
            }
            let demand_nz = NonZeroUsize::new(demand).expect("non-zero");
            let received = tokio::time::timeout_at(deadline, source.receive(demand_nz)).await;
            let batch = match received {
                Err(_) => {
                    let missing = wanted.difference(&seen).count();
                    return Err(violation(check, format!("{missing} messages never received")));
                }
                Ok(Err(error)) => return Err(violation(check, format!("receive failed: {error}"))),
                Ok(Ok(None)) => {
                    let missing = wanted.difference(&seen).count();
                    return Err(violation(
                        check,
                        format!("the source ended with {missing} messages not received"),
                    ));
                }
                Ok(Ok(Some(batch))) => batch,
            };
            if batch.len() > demand {
                return Err(violation(
                    check,
                    format!("asked for {demand}, received {}", batch.len()),
                ));
            }
            seen.extend(batch.iter().map(|message| self.broker.identify(message).id));
            acknowledger.ack(batch, Vec::new()).await;
        }
        acknowledger.flush().await;
        source.shutdown().await;
        Ok(())
    }

    /// Opens a consumer and asks it for nothing for a second: it may hold no more than
    /// its declared prefetch. Then everything is received and finished.
    pub async fn nothing_is_taken_without_demand(&self) -> Check {
        const CHECK: &str = "nothing_is_taken_without_demand";
        let published = self.publish(CHECK, self.messages, 1).await?;
        let source = self.open(CHECK).await?;
        let prefetch = self.broker.declared().prefetch;
        // Watched once the source can deliver (Kafka: it joined its group), for a second.
        let ready_by = Instant::now() + self.timeout;
        while !source.is_ready() {
            if Instant::now() >= ready_by {
                source.shutdown().await;
                return Err(violation(CHECK, format!("not ready after {:?}", self.timeout)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            let taken =
                self.broker.taken(&source).await.map_err(|error| {
                    violation(CHECK, format!("asking what the source holds failed: {error}"))
                })?;
            if taken > prefetch {
                return Err(violation(
                    CHECK,
                    format!("holds {taken} messages with no demand; it declares at most {prefetch}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.receive_all(CHECK, &source, &published, self.timeout).await?;
        self.settle(CHECK).await
    }

    /// Runs a pipeline of 4 processors over the messages: each is acknowledged exactly
    /// once, then the server holds none.
    pub async fn each_message_is_acknowledged_once(&self) -> Check {
        const CHECK: &str = "each_message_is_acknowledged_once";
        let published = self.publish(CHECK, self.messages, 16).await?;
        let (ledger, outcome) = self
            .run_pipeline(CHECK, &published, Behaviour::default(), RetryPolicy::none())
            .await?;
        outcome?;
        ledger.acknowledged_once(CHECK, &published)?;
        self.settle(CHECK).await
    }

    /// Fails every tenth message on its first two attempts, with three allowed: each is
    /// handled on attempts 1, 2 and 3 and then finished.
    pub async fn a_failed_message_is_tried_again(&self) -> Check {
        const CHECK: &str = "a_failed_message_is_tried_again";
        let published = self.publish(CHECK, self.messages.min(50), 16).await?;
        let behaviour = Behaviour {
            fail_until: Some(3),
            ..Behaviour::default()
        };
        let retry = RetryPolicy::new(3)
            .initial_backoff(Duration::from_millis(10))
            .max_backoff(Duration::from_millis(20));
        let (ledger, outcome) = self.run_pipeline(CHECK, &published, behaviour, retry).await?;
        outcome?;
        ledger.acknowledged_once(CHECK, &published)?;
        for message in &published {
            let attempts = ledger
                .calls
                .attempts
                .get(&message.id)
                .cloned()
                .unwrap_or_default();
            let expected: Vec<u32> = if message.id % 10 == 0 {
                vec![1, 2, 3]
            } else {
                vec![1]
            };
            if attempts != expected {
                return Err(violation(
                    CHECK,
                    format!(
                        "message {} was handled on attempts {attempts:?}, not {expected:?}",
                        message.id
                    ),
                ));
            }
        }
        self.settle(CHECK).await
    }

    /// Starts a pipeline whose one processor is stuck on its first message, shuts it down
    /// with a 1 s deadline: nothing is left neither finished nor handed back, and a new
    /// consumer gets every message at once (well before any broker timeout).
    pub async fn messages_not_finished_are_released_at_shutdown(&self) -> Check {
        const CHECK: &str = "messages_not_finished_are_released_at_shutdown";
        let published = self.publish(CHECK, 20, 1).await?;
        let source = Checked::new(self.open(CHECK).await?, self.broker.clone());
        let ledger = source.ledger.clone();
        let handler = Recorder::new(
            self.broker.clone(),
            Behaviour {
                stuck: true,
                ..Behaviour::default()
            },
        );
        let started = handler.started.clone();
        let pipeline = Pipeline::builder(source, handler)
            .processors(Processors::new(1).max_demand(4).min_demand(0))
            .max_in_flight(8)
            .shutdown_deadline(Duration::from_secs(1))
            .start()
            .map_err(|error| violation(CHECK, format!("the pipeline refused to start: {error}")))?;
        tokio::time::timeout(self.timeout, started.notified())
            .await
            .map_err(|_| violation(CHECK, "no message reached the handler".to_owned()))?;
        match pipeline.shutdown().await {
            Err(PipelineError::DeadlineExceeded(missed)) if missed.stranded == 0 => {}
            Err(PipelineError::DeadlineExceeded(missed)) => {
                return Err(violation(
                    CHECK,
                    format!("{} messages neither finished nor handed back", missed.stranded),
                ))
            }
            other => {
                return Err(violation(
                    CHECK,
                    format!("expected the deadline to pass, got {other:?}"),
                ))
            }
        }
        let held = ledger.lock().unwrap_or_else(|p| p.into_inner()).released.len();
        if held == 0 {
            return Err(violation(CHECK, "nothing was released".to_owned()));
        }
        if !self.broker.declared().redelivers_released {
            return Ok(());
        }
        // Everything comes back to a new consumer within 10 s.
        let source = self.open(CHECK).await?;
        self.receive_all(CHECK, &source, &published, Duration::from_secs(10))
            .await
            .map_err(|v| {
                violation(
                    CHECK,
                    format!("released messages not delivered again at once: {}", v.detail),
                )
            })?;
        self.settle(CHECK).await
    }

    /// Starts the connector's consumer process on five times the usual messages, kills
    /// it with `kill -9` once it has handled a fifth, starts it again, and waits for the
    /// server to hold nothing unfinished: every message was handled. `Ok(None)` when the
    /// source has no consumer process; else how many were handled twice.
    pub async fn a_consumer_killed_with_sigkill_loses_nothing(&self) -> Result<Option<usize>, Violation> {
        const CHECK: &str = "a_consumer_killed_with_sigkill_loses_nothing";
        // A folder of this run's own: runs of one test binary go on at the same time.
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("longshore-conformance-{}-{run}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|error| violation(CHECK, format!("no folder for its output: {error}")))?;
        let output = dir.join("handled.txt");
        let Some(mut command) = self.broker.consumer(&output) else {
            return Ok(None);
        };
        let published = self.publish(CHECK, self.messages * 5, 16).await?;
        let spawn = |command: &mut std::process::Command| {
            command
                .spawn()
                .map_err(|error| violation(CHECK, format!("the consumer process does not start: {error}")))
        };
        let mut consumer = Process(spawn(&mut command)?);
        let handled = |output: &std::path::Path| std::fs::read_to_string(output).unwrap_or_default();
        let deadline = Instant::now() + self.timeout;
        while handled(&output).lines().count() < published.len() / 5 {
            if Instant::now() >= deadline {
                return Err(violation(
                    CHECK,
                    "the consumer handled too little to be killed mid-stream".to_owned(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // SIGKILL: nothing of the pipeline's shutdown runs.
        consumer.kill();
        let at_kill = handled(&output).lines().count();
        if at_kill >= published.len() {
            return Err(violation(
                CHECK,
                format!("the consumer had handled all {at_kill} before it was killed: nothing was cut short"),
            ));
        }
        let mut command = self.broker.consumer(&output).expect("it gave one before");
        let mut again = Process(spawn(&mut command)?);
        self.settle(CHECK).await?;
        // Stopped with SIGTERM, so that it leaves its group for the next check at once.
        again.terminate().await;
        let text = handled(&output);
        let mut seen = HashSet::new();
        let mut lines = 0;
        for line in text.lines() {
            let id: u64 = line
                .trim()
                .parse()
                .map_err(|_| violation(CHECK, format!("a line of the output is no id: {line:?}")))?;
            seen.insert(id);
            lines += 1;
        }
        let lost: Vec<u64> = published
            .iter()
            .map(|p| p.id)
            .filter(|id| !seen.contains(id))
            .collect();
        if !lost.is_empty() {
            return Err(violation(
                CHECK,
                format!(
                    "{} messages lost (the server holds none unfinished), the first {:?}",
                    lost.len(),
                    &lost[..lost.len().min(5)]
                ),
            ));
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Some(lines - seen.len()))
    }

    /// Publishes messages of 8 keys and handles them with small random delays, some
    /// failing once: one key's messages are never handled at the same time, and each
    /// key's are finished and acknowledged in the order published.
    pub async fn the_declared_order_holds(&self) -> Check {
        const CHECK: &str = "the_declared_order_holds";
        let published = self.publish(CHECK, self.messages, 8).await?;
        let behaviour = Behaviour {
            fail_until: Some(2),
            jitter: true,
            ..Behaviour::default()
        };
        let retry = RetryPolicy::new(2)
            .initial_backoff(Duration::from_millis(10))
            .max_backoff(Duration::from_millis(20));
        let (ledger, outcome) = self.run_pipeline(CHECK, &published, behaviour, retry).await?;
        outcome?;
        if let Some((key, ids)) = ledger.calls.overlaps.iter().next() {
            return Err(violation(
                CHECK,
                format!("messages {ids:?} of key {key} were handled at the same time"),
            ));
        }
        for (key, acknowledged) in &ledger.acknowledged_by_key {
            if acknowledged.windows(2).any(|w| w[0] >= w[1]) {
                return Err(violation(
                    CHECK,
                    format!("key {key} acknowledged out of order: {acknowledged:?}"),
                ));
            }
        }
        for (key, finished) in &ledger.calls.finished_by_key {
            if finished.windows(2).any(|w| w[0] >= w[1]) {
                return Err(violation(
                    CHECK,
                    format!("key {key} finished out of order: {finished:?}"),
                ));
            }
        }
        self.settle(CHECK).await
    }

    /// Two receives under way at once in the checks that run whole pipelines, unless the
    /// source keeps an order (which one fetch at a time is needed for): each message must
    /// still be delivered and acknowledged once, whichever fetch brought it. The shutdown
    /// check runs with one, the default.
    fn source_concurrency(&self) -> usize {
        if self.broker.declared().ordered {
            1
        } else {
            2
        }
    }

    /// Runs a pipeline over `published` until each is acknowledged (or the timeout), then
    /// shuts it down; the outcome is `Err` when it did not finish in time or did not stop
    /// cleanly.
    async fn run_pipeline(
        &self,
        check: &'static str,
        published: &[Published],
        behaviour: Behaviour,
        retry: RetryPolicy,
    ) -> Result<(Ledger, Check), Violation> {
        let source = Checked::new(self.open(check).await?, self.broker.clone());
        let ledger = source.ledger.clone();
        let handler = Recorder::new(self.broker.clone(), behaviour);
        let calls = handler.calls.clone();
        let pipeline = Pipeline::builder(source, handler)
            .processors(Processors::new(4).max_demand(8))
            .source_concurrency(self.source_concurrency())
            .retry(retry)
            .start()
            .map_err(|error| violation(check, format!("the pipeline refused to start: {error}")))?;
        let wanted: HashSet<u64> = published.iter().map(|p| p.id).collect();
        let deadline = Instant::now() + self.timeout;
        let finished = loop {
            let done = {
                let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
                wanted.iter().all(|id| ledger.acknowledged.contains_key(id))
            };
            if done {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let stopped = pipeline.shutdown().await;
        let mut ledger = std::mem::take(&mut *lock(&ledger));
        ledger.calls = std::mem::take(&mut *lock(&calls));
        let outcome = match (finished, stopped) {
            (false, _) => {
                let acked = ledger.acknowledged.len();
                Err(violation(
                    check,
                    format!(
                        "{} of {} messages acknowledged after {:?}",
                        acked,
                        wanted.len(),
                        self.timeout
                    ),
                ))
            }
            (true, Err(error)) => Err(violation(
                check,
                format!("the pipeline did not stop cleanly: {error}"),
            )),
            (true, Ok(_)) => Ok(()),
        };
        Ok((ledger, outcome))
    }
}

/// A consumer process, killed (SIGKILL) when dropped.
struct Process(std::process::Child);

impl Process {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, and up to 30 s for it to exit; then SIGKILL.
    async fn terminate(&mut self) {
        let pid = self.0.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn violation(check: &'static str, detail: String) -> Violation {
    Violation { check, detail }
}

impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.key, self.id)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
