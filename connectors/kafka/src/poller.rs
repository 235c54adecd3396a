//! The consumer's own thread: polls librdkafka (which also runs the rebalance callbacks),
//! queues records for the pipeline, pauses full partitions, commits on an interval and
//! once more at the end.
//!
//! A thread of its own, not a tokio task: a revoke blocks in its callback until the
//! revoked partitions' messages are acknowledged, and must not block a runtime worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::assignment::Shared;
use crate::client_errors::ClientErrors;
use crate::lag::KafkaLag;
use crate::metadata::{Blocks, KafkaMetadata};
use crate::partitions::{TopicPartition, STALLED_AFTER};
use crate::slot::Slot;

/// How long one poll waits: the latency of resuming a paused partition, and of stopping.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long a full queue from which the pipeline takes nothing waits before the
/// partitions are paused.
const STALL: Duration = Duration::from_secs(1);
// A partition's own stall is seen (its records leave the count of a full queue) well
// before the whole pipeline's is taken for one.
const _: () = assert!(STALLED_AFTER.as_millis() * 2 < STALL.as_millis());

/// The most records handed from librdkafka to the queue at once.
const HANDOFF: usize = 512;

/// How many times the final commit is tried before the consumer closes anyway.
const FINAL_COMMIT_ATTEMPTS: u32 = 5;

/// The bound on reading the group's offsets when partitions come back.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the rebalance protocol's callbacks against the shared assignment, and publishes
/// the lag from librdkafka's statistics.
pub(crate) struct Context {
    pub(crate) shared: Arc<Shared>,
    pub(crate) revoke_drain_timeout: Duration,
    pub(crate) lag: KafkaLag,
    pub(crate) group: String,
    /// The one topic subscribed to by name ([`only_topic`]).
    pub(crate) only_topic: Option<Arc<str>>,
    /// Set once an assignment held a topic other than `only_topic`: a group's leader
    /// (another client's assignor) may hand out topics a member never subscribed to.
    pub(crate) assigned_unsubscribed: AtomicBool,
    /// Set by each rebalance callback, cleared by the poll thread's next commit round
    /// (see [`Poller::resume_running`]).
    pub(crate) rebalanced: AtomicBool,
}

impl Context {
    /// The topic of every record, when it is known without reading it from librdkafka
    /// (which measures and checks the name as UTF-8 for each record).
    fn every_records_topic(&self) -> Option<&Arc<str>> {
        self.only_topic
            .as_ref()
            .filter(|_| !self.assigned_unsubscribed.load(Ordering::Relaxed))
    }
}

/// The one topic a consumer subscribed to `topics` reads, if it subscribed to exactly one
/// by name (a name starting with `^` is a pattern, matching any number of topics).
pub(crate) fn only_topic(topics: &[String]) -> Option<Arc<str>> {
    match topics {
        [topic] if !topic.starts_with('^') => Some(Arc::from(topic.as_str())),
        _ => None,
    }
}

impl ClientContext for Context {
    /// Every `lag_interval`, on the poll thread, from what librdkafka already knows: no
    /// broker round trip.
    fn stats(&self, statistics: Statistics) {
        self.lag.refresh(&self.shared.lock(), &statistics, &self.group);
    }
}

impl ConsumerContext for Context {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.shared.confirmed(offsets),
            // Not confirmed: the next interval commits the same offsets again.
            Err(error) => tracing::debug!(%error, "offset commit not confirmed"),
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalanced.store(true, Ordering::Relaxed);
        if let Rebalance::Revoke(tpl) = rebalance {
            // Revoked partitions go unpaused (but those an operator paused, paused
            // again on a re-assign anyway): librdkafka keeps a pause across a revoke
            // and a re-assign, and a resume made once they are assigned again can lose
            // a race to the assignment's own start of fetching (it is dropped as
            // outdated: confluentinc/librdkafka issue 5591), leaving the partition
            // paused for good. Now, before the unassign, nothing races it; the
            // partitions are not fetched meanwhile (librdkafka pauses them itself for
            // the rebalance), and what comes of them is dropped as not ours any more.
            if let Err(error) = consumer.resume(&self.shared.not_held(tpl)) {
                tracing::warn!(%error, "cannot unpause revoked partitions");
            }
            if consumer.assignment_lost() {
                // The session expired: the partitions may be another consumer's already.
                // Nothing more of them is handed out, acknowledged or committed: a broker
                // that does not fence would take those commits.
                self.shared.lose(tpl);
                tracing::warn!(
                    partitions = tpl.count(),
                    "partitions lost (session timed out); let go without draining or committing"
                );
                return;
            }
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
        self.rebalanced.store(true, Ordering::Relaxed);
        match rebalance {
            // Closing (after the final commit), librdkafka turns the assignment into an
            // unassign, and nothing here would be handed out: no commit is made either. One
            // made now can land after the group has begun terminating, which librdkafka
            // asserts never happens and aborts the process (`rd_kafka_cgrp_terminated`,
            // confluentinc/librdkafka issue 4027). The next owner reads from the group's
            // offsets.
            Rebalance::Assign(tpl) if self.shared.lock().finished => {
                tracing::info!(
                    partitions = tpl.count(),
                    "partitions assigned while closing; left to the next owner"
                );
            }
            Rebalance::Assign(tpl) => {
                // Seen here, on the poll thread, before any record of the new partitions
                // is polled: the intake reads each record's topic from then on.
                let unsubscribed = |only: &Arc<str>| tpl.elements().iter().any(|e| e.topic() != &**only);
                if self.only_topic.as_ref().is_some_and(unsubscribed)
                    && !self.assigned_unsubscribed.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!("assigned partitions of a topic this consumer did not subscribe to");
                }
                // New partitions run, whatever was paused before. The revoke unpaused
                // them already, so this mostly makes no call into librdkafka; it still
                // counts for a partition an operator let go of while it was not ours
                // (its pause kept across), and for those kept through an incremental
                // rebalance after a stall (everything paused), which run again too. A
                // stall still going on pauses them again.
                let was_paused_all = std::mem::take(&mut self.shared.lock().paused_all);
                let resume = if was_paused_all {
                    consumer.assignment().unwrap_or_else(|_| (*tpl).clone())
                } else {
                    (*tpl).clone()
                };
                if let Err(error) = consumer.resume(&self.shared.not_paused(&resume)) {
                    tracing::warn!(%error, "cannot resume assigned partitions");
                }
                // A partition an operator paused comes back paused.
                let held = self.shared.held(tpl);
                if held.count() > 0 {
                    match consumer.pause(&held) {
                        Ok(()) => self.shared.held_applied(&held, false),
                        Err(error) => {
                            tracing::warn!(%error, "cannot pause partitions paused by an operator; trying again");
                            // The poll thread applies it on its next round.
                            self.shared.lock().held.changed = true;
                        }
                    }
                }
                let pending = self.shared.pending(tpl);
                let group = (pending.count() > 0)
                    .then(|| consumer.committed_offsets(pending, COMMITTED_TIMEOUT))
                    .and_then(|read| {
                        read.inspect_err(|error| tracing::warn!(%error, "cannot read the group's offsets"))
                            .ok()
                    });
                let retry = self.shared.assign(tpl, group.as_ref());
                if commit(consumer, &retry, CommitMode::Sync) {
                    self.shared.confirmed(&retry);
                }
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance failed"),
            // Gone from this consumer: not held here any more (a pause comes back with it).
            Rebalance::Revoke(tpl) => self.shared.held_revoked(tpl),
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

/// How often the poll thread commits, and how long its close may take.
pub(crate) struct Intervals {
    pub(crate) commit: Duration,
    pub(crate) close: Duration,
    /// How often the held partitions' high watermarks are read (`lag_interval`).
    pub(crate) lag: Duration,
}

/// The bound on reading the held partitions' high watermarks, on the poll thread.
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) fn spawn(
    consumer: BaseConsumer<Context>,
    shared: Arc<Shared>,
    intervals: Intervals,
    group: String,
) -> std::io::Result<PollThread> {
    let close_timeout = intervals.close;
    let (done, finished) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("longshore-kafka".to_owned())
        .spawn(move || {
            // Dropped when the thread ends, even by a panic: that is the signal.
            let _done = done;
            Poller { consumer, shared }.run(intervals, &group);
        })?;
    Ok(PollThread {
        handle,
        finished,
        close_timeout,
    })
}

/// The running poll thread.
#[derive(Debug)]
pub(crate) struct PollThread {
    handle: JoinHandle<()>,
    finished: mpsc::Receiver<()>,
    close_timeout: Duration,
}

impl PollThread {
    /// Whether the thread has ended (told to finish, or by a panic).
    pub(crate) fn has_ended(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits at most the close timeout for the thread (told to finish) to make its final commit
    /// and leave the group. librdkafka's close can wait forever on a broker that stopped
    /// answering; then the thread is left behind rather than the service kept from
    /// exiting: what it had not committed is read again, never lost.
    pub(crate) fn join(self) {
        let timeout = self.close_timeout;
        match self.finished.recv_timeout(timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => tracing::error!(
                ?timeout,
                "the kafka consumer did not close in time; leaving it behind"
            ),
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if self.handle.join().is_err() {
                    tracing::error!("the kafka poll thread panicked");
                }
            }
        }
    }
}

struct Poller {
    consumer: BaseConsumer<Context>,
    shared: Arc<Shared>,
}

impl Poller {
    fn run(self, intervals: Intervals, group: &str) {
        let mut intake = Intake::default();
        // Kept from one handoff to the next, as the records in `Intake` are: made again
        // for each handoff, these large allocations cost about 230 instructions a record
        // (measured once on the mock cluster).
        let mut ready = Vec::with_capacity(HANDOFF);
        let mut last_commit = Instant::now();
        let mut watermarks_read = Instant::now();
        let mut full_since: Option<Instant> = None;
        let mut takes_seen = 0;
        let errors = ClientErrors::new(group);
        loop {
            let (stopped, finished, queued, paused_all, held_changed, takes) = {
                let mut state = self.shared.lock();
                let now = Instant::now();
                // The liveness check's heartbeat.
                state.polled_at = now;
                (
                    state.stopped,
                    state.finished,
                    self.shared.unstalled(&state, now),
                    state.paused_all,
                    std::mem::take(&mut state.held.changed),
                    state.takes,
                )
            };
            if finished {
                break;
            }
            if held_changed {
                self.apply_held(paused_all);
            }
            if stopped && !paused_all {
                self.pause_all(true);
            }
            // Back-pressure: with the queue full (of records not held by a stalled or
            // paused partition), stop taking records from librdkafka (it stops fetching
            // once its own bounded prefetch is full). Only a full queue from which nothing
            // is taken for STALL pauses the partitions, so that polling can go on serving
            // the group's callbacks; pausing drops librdkafka's prefetch, too dear for the
            // ordinary ebb and flow of demand.
            let limit = self.shared.max_buffered_per_partition;
            let full = queued >= limit;
            if takes != takes_seen {
                takes_seen = takes;
                full_since = full_since.map(|_| Instant::now());
            }
            if full && !stopped {
                let since = *full_since.get_or_insert_with(Instant::now);
                let left = STALL.saturating_sub(since.elapsed());
                if !left.is_zero() {
                    // Woken as soon as the pipeline takes records; at the latest for a commit
                    // (then polling once more serves the group's callbacks too), or when a
                    // partition may have stalled since (its records then no longer count).
                    let wait = left.min(intervals.commit).min(STALLED_AFTER);
                    if self.shared.wait_for_room(limit, wait) || last_commit.elapsed() < intervals.commit {
                        continue;
                    }
                } else if !paused_all {
                    tracing::info!("pipeline stalled with a full queue; pausing all partitions");
                    self.pause_all(true);
                }
            } else if full_since.take().is_some() && paused_all && !stopped {
                self.pause_all(false);
            }
            // Whatever librdkafka has ready, up to a handoff, in one lock and one wake-up:
            // a wake-up per record would cost more than the record. Never more than the
            // bound has room for, `max_buffered_per_partition` records of partitions neither
            // stalled nor paused (a handoff of 512 used to overshoot it).
            let handoff = HANDOFF.min(limit.saturating_sub(queued).max(1));
            let mut timeout = POLL_INTERVAL;
            while ready.len() < handoff {
                match self.consumer.poll(timeout) {
                    Some(Ok(message)) => ready.push(message),
                    Some(Err(error)) => {
                        errors.count(&error);
                        tracing::warn!(%error, "kafka consumer error");
                    }
                    None => break,
                }
                timeout = Duration::ZERO;
            }
            // Once stopped, what arrives is not handed out, so it is read again later.
            if !stopped && !ready.is_empty() {
                let only_topic = self.consumer.context().every_records_topic();
                let full = intake.enqueue(&self.shared, &ready, only_topic);
                if !full.is_empty() && !self.set_paused(&full, true) {
                    // Still fetched: counted against the bound again (a paused partition's
                    // queue is not), and paused again with a later record.
                    self.shared.not_paused_after_all(&full);
                }
            }
            ready.clear();
            self.resume_drained();
            if last_commit.elapsed() >= intervals.commit {
                commit(&self.consumer, &self.shared.commits(false), CommitMode::Async);
                last_commit = Instant::now();
                self.resume_running();
            }
            if watermarks_read.elapsed() >= intervals.lag {
                self.read_held_watermarks();
                watermarks_read = Instant::now();
            }
        }
        // The final commit is what saves a restart from reading the run's tail again: a
        // refusal (a rebalance, a coordinator moving) is retried a few times, polling in
        // between so that the group's state can settle.
        let commits = self.shared.commits(true);
        for attempt in 1..=FINAL_COMMIT_ATTEMPTS {
            if commit(&self.consumer, &commits, CommitMode::Sync) {
                break;
            }
            if attempt < FINAL_COMMIT_ATTEMPTS {
                // Records polled now are never handed out: they stay uncommitted.
                let _ = self.consumer.poll(POLL_INTERVAL * 5 * attempt);
            }
        }
        tracing::info!("kafka consumer closing after its final commit");
        // Dropping the consumer leaves the group.
    }

    /// Pauses the assigned partitions an operator paused, and resumes the others that
    /// nothing else holds paused (unless every partition is paused: a stall or a stop).
    fn apply_held(&self, paused_all: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(assignment) => assignment,
            Err(error) => {
                tracing::warn!(%error, "cannot read the assignment");
                // Applied on the next round.
                self.shared.lock().held.changed = true;
                return;
            }
        };
        let held = self.shared.held(&assignment);
        if held.count() > 0 {
            if let Err(error) = self.consumer.pause(&held) {
                tracing::warn!(%error, "cannot pause partitions");
                self.shared.lock().held.changed = true;
                return;
            }
        }
        self.shared.held_applied(&held, true);
        if !paused_all {
            self.resume_not_paused(&assignment);
        }
    }

    /// Resumes again the partitions that should be fetched (unless every partition is
    /// paused: a stall or a stop), should librdkafka have dropped a resume: it drops one
    /// whose operation another has outdated meanwhile (confluentinc/librdkafka issue
    /// 5591), leaving the partition paused for good with nothing to say so. Resuming a
    /// partition that librdkafka does not hold paused costs nothing (no operation is
    /// made). Not in the round after a rebalance: while librdkafka pauses the assignment
    /// for it, this resume would make an operation for each partition, which could
    /// itself outdate the assignment's start of fetching. (A heuristic: the round after
    /// is most often microseconds after the callbacks, while librdkafka's own resume and
    /// starts of fetching are still pending.)
    fn resume_running(&self) {
        if self.consumer.context().rebalanced.swap(false, Ordering::Relaxed) || self.shared.lock().paused_all
        {
            return;
        }
        match self.consumer.assignment() {
            Ok(assignment) => self.resume_not_paused(&assignment),
            Err(error) => tracing::debug!(%error, "cannot read the assignment"),
        }
    }

    /// Resumes the partitions of `assignment` that nothing holds paused.
    fn resume_not_paused(&self, assignment: &TopicPartitionList) {
        if let Err(error) = self.consumer.resume(&self.shared.not_paused(assignment)) {
            tracing::warn!(%error, "cannot resume partitions");
        }
    }

    /// Reads the high watermarks of the assigned partitions an operator holds paused,
    /// in one request per broker (a list-offsets of the latest), for their lag.
    fn read_held_watermarks(&self) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let held = self.shared.held(&assignment);
        let mut read = HashMap::new();
        if held.count() > 0 {
            let mut latest = TopicPartitionList::new();
            for element in held.elements() {
                // A timestamp of -1 asks for the latest offset: the high watermark.
                let _ =
                    latest.add_partition_offset(element.topic(), element.partition(), rdkafka::Offset::End);
            }
            match self.consumer.offsets_for_times(latest, WATERMARKS_TIMEOUT) {
                Ok(offsets) => {
                    for element in offsets.elements() {
                        if let rdkafka::Offset::Offset(high) = element.offset() {
                            read.insert((Arc::from(element.topic()), element.partition()), high);
                        }
                    }
                }
                Err(error) => {
                    // The last ones read stand until a read succeeds.
                    tracing::debug!(%error, "cannot read the paused partitions' high watermarks");
                    return;
                }
            }
        }
        self.shared.lock().held.high_watermarks = read;
    }

    fn resume_drained(&self) {
        let resume = self.shared.drained_to_resume();
        if !resume.is_empty() {
            self.set_paused(&resume, false);
        }
    }

    /// Pauses every assigned partition, or resumes those not paused for a stall: those
    /// stay paused until their records are acknowledged, so that a stuck partition's
    /// records never pile up.
    fn pause_all(&self, paused: bool) {
        match self.consumer.assignment() {
            Ok(assignment) if paused => {
                if let Err(error) = self.consumer.pause(&assignment) {
                    tracing::warn!(%error, "cannot pause partitions");
                }
            }
            Ok(assignment) => self.resume_not_paused(&assignment),
            Err(error) => tracing::warn!(%error, "cannot read the assignment"),
        }
        self.shared.lock().paused_all = paused;
    }

    /// `false` when librdkafka refused.
    fn set_paused(&self, partitions: &[(Arc<str>, i32)], paused: bool) -> bool {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            tpl.add_partition(topic, *partition);
        }
        let result = if paused {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(error) = &result {
            tracing::warn!(%error, paused, "cannot pause or resume partitions");
        }
        result.is_ok()
    }
}

/// Turns librdkafka's messages into queued records.
#[derive(Default)]
struct Intake {
    /// One shared name per topic: records hold a reference, not a copy.
    topics: HashMap<String, Arc<str>>,
    /// The partition of the last record queued, and its slot (a hint).
    last: Option<(TopicPartition, Slot)>,
    blocks: Blocks,
    /// The records of a handoff, between their copy and their queueing.
    records: Vec<KafkaMetadata>,
}

impl Intake {
    /// Queues `messages` for the pipeline; returns the partitions to pause. `only_topic`:
    /// every message's topic, when known (see [`Context`]).
    fn enqueue(
        &mut self,
        shared: &Shared,
        messages: &[BorrowedMessage<'_>],
        only_topic: Option<&Arc<str>>,
    ) -> Vec<TopicPartition> {
        // Copied before taking the lock, which the pipeline's takes and acknowledgements
        // need meanwhile. librdkafka hands out runs of one partition: the last record's
        // slot is mostly this one's, a hint checked under the lock.
        let mut records = std::mem::take(&mut self.records);
        records.extend(messages.iter().map(|message| {
            let partition = message.partition();
            let (topic, hint) = match (&self.last, only_topic) {
                (Some((tp, slot)), Some(_)) if tp.1 == partition => (tp.0.clone(), *slot),
                (Some((tp, slot)), None) if tp.1 == partition && *tp.0 == *message.topic() => {
                    (tp.0.clone(), *slot)
                }
                _ => {
                    let topic = match only_topic {
                        Some(topic) => topic.clone(),
                        None => self.topic(message.topic()),
                    };
                    self.last = Some(((topic.clone(), partition), Slot::NONE));
                    (topic, Slot::NONE)
                }
            };
            KafkaMetadata::from_borrowed(message, topic, hint, &mut self.blocks)
        }));
        let full = shared.queue_handoff(records.drain(..), &mut self.last, Instant::now());
        self.records = records;
        full
    }

    /// The one shared name of `topic`.
    fn topic(&mut self, topic: &str) -> Arc<str> {
        if let Some(interned) = self.topics.get(topic) {
            return interned.clone();
        }
        let interned: Arc<str> = Arc::from(topic);
        self.topics.insert(topic.to_owned(), interned.clone());
        interned
    }
}

#[cfg(test)]
mod tests {
    use super::only_topic;

    #[test]
    fn only_one_topic_named_is_every_records_topic() {
        let topics = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(only_topic(&topics(&["orders"])).as_deref(), Some("orders"));
        assert_eq!(only_topic(&topics(&["^orders-.*"])), None);
        assert_eq!(only_topic(&topics(&["orders", "refunds"])), None);
        assert_eq!(only_topic(&topics(&[])), None);
    }
}
