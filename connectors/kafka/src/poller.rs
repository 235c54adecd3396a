//! The consumer's own thread: polls librdkafka (which also runs the rebalance callbacks),
//! queues records for the pipeline, pauses full partitions, commits on an interval and
//! once more at the end.
//!
//! A thread of its own, not a tokio task: a revoke blocks in its callback until the
//! revoked partitions' messages are acknowledged, and must not block a runtime worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use longshore::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::assignment::Shared;
use crate::lag::KafkaLag;
use crate::record::KafkaRecord;

/// How long one poll waits: the latency of resuming a paused partition, and of stopping.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The bound on each broker request of a lag refresh.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the rebalance protocol's callbacks against the shared assignment.
pub(crate) struct Context {
    pub(crate) shared: Arc<Shared>,
    pub(crate) revoke_drain_timeout: Duration,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.shared.confirmed(offsets),
            // Not confirmed: the next interval commits the same offsets again.
            Err(error) => tracing::debug!(%error, "offset commit not confirmed"),
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Once finished, nothing in flight will be acknowledged any more.
            let timeout = if self.shared.lock().finished {
                Duration::ZERO
            } else {
                self.revoke_drain_timeout
            };
            let commits = self.shared.revoke(tpl, timeout);
            if !commit(consumer, &commits, CommitMode::Sync) {
                // Mid-rebalance the broker may refuse; if the partition comes back, the
                // commit is made then and the records it covers are not handled twice.
                self.shared.unconfirmed(&commits);
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let retry = self.shared.assign(tpl);
                if commit(consumer, &retry, CommitMode::Sync) {
                    self.shared.confirmed(&retry);
                }
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// Commits `commits`; `false` if a synchronous commit was refused.
fn commit(consumer: &BaseConsumer<Context>, commits: &TopicPartitionList, mode: CommitMode) -> bool {
    if commits.count() == 0 {
        return true;
    }
    match consumer.commit(commits, mode) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "offset commit failed");
            false
        }
    }
}

/// How often the poll thread commits and reads the lag.
pub(crate) struct Intervals {
    pub(crate) commit: Duration,
    pub(crate) lag: Duration,
}

pub(crate) fn spawn(
    consumer: BaseConsumer<Context>,
    shared: Arc<Shared>,
    intervals: Intervals,
    lag: (KafkaLag, String),
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("longshore-kafka".to_owned())
        .spawn(move || Poller::new(consumer, shared).run(intervals, lag))
}

struct Poller {
    consumer: BaseConsumer<Context>,
    shared: Arc<Shared>,
    paused_all: bool,
}

impl Poller {
    fn new(consumer: BaseConsumer<Context>, shared: Arc<Shared>) -> Self {
        Poller {
            consumer,
            shared,
            paused_all: false,
        }
    }

    fn run(mut self, intervals: Intervals, (lag, group): (KafkaLag, String)) {
        let mut last_commit = Instant::now();
        let mut last_lag = Instant::now();
        let mut topics = HashMap::new();
        loop {
            let (stopped, finished) = {
                let state = self.shared.lock();
                (state.stopped, state.finished)
            };
            if finished {
                break;
            }
            if stopped && !self.paused_all {
                self.pause_all();
            }
            match self.consumer.poll(POLL_INTERVAL) {
                // Once stopped, what arrives is not handed out, so it is read again later.
                Some(Ok(message)) if !stopped => self.enqueue(&mut topics, &message),
                Some(Ok(_)) => {}
                Some(Err(error)) => tracing::warn!(%error, "kafka consumer error"),
                None => {}
            }
            self.resume_drained();
            if last_commit.elapsed() >= intervals.commit {
                commit(&self.consumer, &self.shared.commits(false), CommitMode::Async);
                last_commit = Instant::now();
            }
            if last_lag.elapsed() >= intervals.lag {
                lag.refresh(&self.consumer, &group, LAG_TIMEOUT);
                last_lag = Instant::now();
            }
        }
        commit(&self.consumer, &self.shared.commits(true), CommitMode::Sync);
        tracing::info!("kafka consumer closing after its final commit");
        // Dropping the consumer leaves the group.
    }

    /// Queues `message` for the pipeline; `topics` keeps one shared name per topic.
    fn enqueue(&self, topics: &mut HashMap<String, Arc<str>>, message: &BorrowedMessage<'_>) {
        let topic = match topics.get(message.topic()) {
            Some(topic) => topic.clone(),
            None => {
                let topic: Arc<str> = Arc::from(message.topic());
                topics.insert(message.topic().to_owned(), topic.clone());
                topic
            }
        };
        let key = (topic.clone(), message.partition());
        let mut state = self.shared.lock();
        let Some(partition) = state.partitions.get_mut(&key) else {
            // Fetched just before its revoke: not ours any more.
            return;
        };
        if partition.done_below.is_some_and(|done| message.offset() < done) {
            // Acknowledged under an earlier assignment (its commit is made at assign).
            return;
        }
        partition.offsets.received(message.offset());
        partition.queued += 1;
        let record = KafkaRecord::from_borrowed(message, topic, partition.generation);
        let full =
            !partition.paused && partition.offsets.in_flight() >= self.shared.max_buffered_per_partition;
        if full {
            partition.paused = true;
        }
        state.queue.push_back(Message::new(record));
        drop(state);
        self.shared.ready.notify_one();
        if full {
            self.set_paused(&[key], true);
        }
    }

    fn resume_drained(&mut self) {
        let resume = std::mem::take(&mut self.shared.lock().to_resume);
        if !resume.is_empty() && !self.paused_all {
            self.set_paused(&resume, false);
        }
    }

    fn pause_all(&mut self) {
        match self.consumer.assignment() {
            Ok(assignment) => {
                if let Err(error) = self.consumer.pause(&assignment) {
                    tracing::warn!(%error, "cannot pause partitions");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the assignment"),
        }
        self.paused_all = true;
    }

    fn set_paused(&self, partitions: &[(Arc<str>, i32)], paused: bool) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            tpl.add_partition(topic, *partition);
        }
        let result = if paused {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(error) = result {
            tracing::warn!(%error, paused, "cannot pause or resume partitions");
        }
    }
}
