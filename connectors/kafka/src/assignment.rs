//! What the consumer owns right now: the assigned partitions with their offsets, and the
//! records fetched but not yet handed to the pipeline. Shared by the poll thread, the
//! rebalance callbacks and the acknowledger.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::topic_partition_list::TopicPartitionListElem;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;

use crate::metadata::{KafkaMessage, KafkaMetadata};
use crate::partitions::{Partition, Partitions, TopicPartition};
use crate::slot::Slot;

/// The key of one element of a partition list.
fn key_of(element: &TopicPartitionListElem<'_>) -> TopicPartition {
    (Arc::from(element.topic()), element.partition())
}

#[derive(Debug)]
pub(crate) struct State {
    /// With the records fetched and not yet asked for, queued in each partition. Bounded:
    /// those of partitions neither stalled nor paused by the poll thread's limit, a
    /// stalled partition's by its pause (see [`State::queue_record`]).
    pub(crate) partitions: Partitions,
    pub(crate) next_generation: u64,
    /// Paused partitions that drained below half their limit.
    pub(crate) to_resume: Vec<TopicPartition>,
    /// Revoke commits the broker refused (a rebalance in progress): committed again if
    /// the partition comes back to this consumer.
    pub(crate) unconfirmed: HashMap<TopicPartition, i64>,
    /// Every assigned partition is paused: the pipeline stalled, or is stopping.
    pub(crate) paused_all: bool,
    /// The consumer joined its group (its first assignment came, empty or not).
    pub(crate) joined: bool,
    /// The source stopped fetching: the pipeline is shutting down.
    pub(crate) stopped: bool,
    /// The acknowledger is gone (or was never taken): commit a last time and close.
    pub(crate) finished: bool,
    /// When the poll thread last went round its loop.
    pub(crate) polled_at: Instant,
    /// Takes that handed out records, counted: the poll thread's sign that the pipeline
    /// still takes records while its queue is full.
    pub(crate) takes: u64,
    /// The poll thread's handoffs of records to the queue, counted (see
    /// [`Partition::paused_in`]).
    pub(crate) intake_round: u64,
    /// Threads waiting on [`Shared`]'s condition variables, counted so that a signal is
    /// sent only to a waiter: std's signal is a system call even when none waits, and
    /// takes and acknowledgements, a few a chunk, almost never have one.
    pub(crate) waiting: Waiting,
    /// Partitions and topics an operator paused (see [`KafkaPause`](crate::KafkaPause)):
    /// kept across rebalances, so that a partition paused comes back paused.
    pub(crate) held: Held,
}

/// Threads waiting, counted under the lock their condition is read under.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    /// For acknowledgements: a revoke draining its partitions.
    acknowledged: u32,
    /// For room in the queue: the poll thread with the queue full.
    room: u32,
}

/// What an operator paused.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub(crate) partitions: HashSet<TopicPartition>,
    pub(crate) topics: HashSet<Arc<str>>,
    /// Changed since the poll thread last applied it.
    pub(crate) changed: bool,
    /// The assigned partitions librdkafka was told to pause for it: nothing more of them
    /// is fetched.
    pub(crate) applied: HashSet<TopicPartition>,
    /// The high watermarks of the held partitions, read from the brokers: librdkafka's
    /// statistics take them from fetch responses, and a paused partition has none.
    pub(crate) high_watermarks: HashMap<TopicPartition, i64>,
}

impl Held {
    pub(crate) fn contains(&self, key: &TopicPartition) -> bool {
        self.topics.contains(&key.0) || self.partitions.contains(key)
    }

    /// The high watermark of `key` as known: the newer of librdkafka's (`fetched`) and
    /// the one read while it was held.
    pub(crate) fn high_watermark(&self, key: &TopicPartition, fetched: i64) -> i64 {
        self.high_watermarks
            .get(key)
            .map_or(fetched, |&read| read.max(fetched))
    }
}

impl Default for State {
    fn default() -> Self {
        State {
            partitions: Partitions::default(),
            next_generation: 0,
            to_resume: Vec::new(),
            unconfirmed: HashMap::new(),
            paused_all: false,
            joined: false,
            stopped: false,
            finished: false,
            polled_at: Instant::now(),
            takes: 0,
            intake_round: 0,
            waiting: Waiting::default(),
            held: Held::default(),
        }
    }
}

impl State {
    /// Queues a fetched record of the assigned partition at its slot, unless it was
    /// acknowledged under an earlier assignment, at `now`. Returns its partition if that
    /// must now be paused: stalled (see [`Partition::is_stalled`]: `cap`, its share of the
    /// in-flight budget, handed out, and records queued for long) and holding
    /// `max_buffered` records, queued and out.
    ///
    /// A record whose offset does not follow the partition's last (an offset reset after
    /// `OffsetOutOfRange`, a truncated log) starts the partition's tracking again, as a
    /// new assignment of it would: what it had queued is dropped (read again), and the
    /// acknowledgements of what it had handed out count for nothing, so no commit passes
    /// a record read again and not yet finished.
    pub(crate) fn queue_record(
        &mut self,
        mut record: KafkaMetadata,
        cap: usize,
        max_buffered: usize,
        now: Instant,
    ) -> Option<TopicPartition> {
        let partition = self
            .partitions
            .at(record.slot)
            .expect("an assigned partition's record");
        if partition.done_below.is_some_and(|done| record.offset() < done) {
            // Acknowledged under an earlier assignment (its commit is made at assign).
            return None;
        }
        if partition.offsets.in_flight() == 0 {
            partition.progressed_at = now;
        }
        if !partition.offsets.received(record.offset(), record.timestamp_ms()) {
            record.slot = self.restart(&record);
            let partition = self.partitions.at(record.slot).expect("just restarted");
            assert!(partition.offsets.received(record.offset(), record.timestamp_ms()));
        }
        let partition = self.partitions.at(record.slot).expect("assigned");
        // Paused only when stalled: pausing drops librdkafka's prefetch (a fetch round trip
        // to get it back), too dear for the ordinary ebb and flow of demand. A busy
        // partition's queued records count against the poll thread's bound (see
        // [`Shared::unstalled`]); a stalled one's are not counted there, and would pile up
        // without bound behind a record that never finishes.
        // Not queued yet, so still counted as handed out: its cap is one more.
        let out = partition.handed_out() - 1;
        // A record polled in a round after its partition's pause was made (a stall's at
        // the end of the round that decided it) means librdkafka dropped the pause, as it
        // drops an operation a rebalance outdated (confluentinc/librdkafka issue 5591).
        // Paused again: a stalled partition's records would pile up without bound,
        // counted by no bound; an operator's pause is kept while the operator still
        // holds the partition (a resume of it not yet applied leaves the mark).
        let round = self.intake_round;
        let stall_lost = partition.paused && partition.paused_in < round;
        let held_stale = partition.held_in.is_some_and(|held_in| held_in < round);
        let held_lost = held_stale
            && self
                .held
                .contains(&(record.topic_arc().clone(), record.partition()));
        let stalled = !partition.paused
            && partition.is_stalled(cap + 1, now)
            && out + partition.queued() + 1 >= max_buffered;
        if stalled || stall_lost {
            partition.paused = true;
            partition.paused_in = round;
        }
        if held_stale {
            partition.held_in = held_lost.then_some(round);
        }
        if stall_lost || held_lost {
            tracing::warn!(
                topic = %record.topic(),
                partition = record.partition(),
                for_operator = held_lost,
                "a paused partition is still fetched (librdkafka dropped the pause); pausing it again"
            );
        }
        let pause = stalled || stall_lost || held_lost;
        let full = pause.then(|| (record.topic_arc().clone(), record.partition()));
        self.partitions.enqueue(record, now);
        full
    }

    /// Drops the queued records of `partitions` (unacknowledged: read again by whoever
    /// owns them next). Counted as dropped, not queued: a revoke waiting for its
    /// partitions' records in flight leaves the partitions in place meanwhile, and what
    /// may be taken is counted from the queue.
    fn drop_queued(&mut self, partitions: &[TopicPartition]) {
        partitions.iter().for_each(|tp| self.partitions.drop_queued(tp));
    }

    /// Starts the tracking of `record`'s partition again, under a new generation; returns
    /// the partition's new slot.
    fn restart(&mut self, record: &KafkaMetadata) -> Slot {
        let key = (record.topic_arc().clone(), record.partition());
        let old = self.partitions.remove(&key).expect("assigned");
        tracing::warn!(
            topic = %key.0,
            partition = key.1,
            offset = record.offset(),
            committable = ?old.offsets.committable(),
            "offset went back (an offset reset or a truncated log); tracking the partition from there"
        );
        if old.paused {
            self.to_resume.push(key.clone());
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        // A new epoch: the offset it reset from may no longer exist (that is what an
        // `OffsetOutOfRange` says), so its commits start from the new position.
        let mut restarted = Partition::new(generation, None);
        // Still paused for an operator in librdkafka: the restart changes no pause.
        restarted.held_in = old.held_in;
        self.partitions.insert(key, restarted)
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Signalled when acknowledgements arrive, for a revoke waiting on its partitions.
    acknowledged: Condvar,
    /// Signalled when records are queued.
    pub(crate) ready: Notify,
    /// Signalled when the pipeline takes records from the queue.
    room: Condvar,
    pub(crate) max_buffered_per_partition: usize,
    /// The pipeline's in-flight limit (unbounded until the pipeline says).
    max_in_flight: AtomicUsize,
    /// Where pauses made through [`KafkaPause`](crate::KafkaPause) are recorded, once the
    /// pipeline starts.
    pub(crate) changes: std::sync::OnceLock<longshore::source::PartChanges>,
}

impl Shared {
    pub(crate) fn new(max_buffered_per_partition: usize) -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::default(),
            acknowledged: Condvar::new(),
            ready: Notify::new(),
            room: Condvar::new(),
            max_buffered_per_partition,
            max_in_flight: AtomicUsize::new(usize::MAX),
            changes: std::sync::OnceLock::new(),
        })
    }

    /// Tells the pipeline's in-flight limit, which bounds each partition's share of it.
    pub(crate) fn set_max_in_flight(&self, limit: usize) {
        self.max_in_flight.store(limit, Relaxed);
    }

    /// The most records one partition may have handed out and unacknowledged: at most
    /// `max_buffered_per_partition`, and at most an equal share of the pipeline's
    /// in-flight limit among the partitions with records outstanding, so that a partition
    /// stuck behind a retry never holds more than its share and starves the others. The
    /// share is never above a quarter of the limit with four partitions or more assigned
    /// (half with two, all with one): credits given out cannot be taken back, and the
    /// first partition read must not take them all before the others' records arrive.
    pub(crate) fn cap(&self, state: &State) -> usize {
        let active = state
            .partitions
            .values()
            .filter(|p| p.offsets.in_flight() > 0)
            .count();
        let sharing = active.max(state.partitions.len().min(4)).max(1);
        let share = self.max_in_flight.load(Relaxed) / sharing;
        self.max_buffered_per_partition.min(share).max(1)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The refused revoke commits (see [`State::unconfirmed`]) of partitions in `tpl`.
    pub(crate) fn pending(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        self.pick(tpl, |state, key| {
            state.unconfirmed.get(key).map(|&offset| Offset::Offset(offset))
        })
    }

    /// The partitions of `tpl` that are not paused for a stall nor by an operator.
    pub(crate) fn not_paused(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        self.pick(tpl, |state, key| {
            let paused = state.partitions.get(key).is_some_and(|p| p.paused) || state.held.contains(key);
            (!paused).then_some(Offset::Invalid)
        })
    }

    /// The partitions of `tpl` an operator paused.
    pub(crate) fn held(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        self.held_or_not(tpl, true)
    }

    /// The partitions of `tpl` no operator paused.
    pub(crate) fn not_held(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        self.held_or_not(tpl, false)
    }

    fn held_or_not(&self, tpl: &TopicPartitionList, held: bool) -> TopicPartitionList {
        self.pick(tpl, |state, key| {
            (state.held.contains(key) == held).then_some(Offset::Invalid)
        })
    }

    /// The partitions of `tpl` that `pick` gives an offset, with it (`Offset::Invalid`:
    /// none, as a list of partitions alone holds).
    fn pick(
        &self,
        tpl: &TopicPartitionList,
        pick: impl Fn(&State, &TopicPartition) -> Option<Offset>,
    ) -> TopicPartitionList {
        let state = self.lock();
        let mut picked = TopicPartitionList::new();
        for key in tpl.elements().iter().map(key_of) {
            if let Some(offset) = pick(&state, &key) {
                // Set on the element just added: `add_partition_offset` looks it up again.
                picked
                    .add_partition(&key.0, key.1)
                    .set_offset(offset)
                    .expect("a valid offset");
            }
        }
        picked
    }

    /// librdkafka was told to pause `paused` for an operator; with `all`, those are all
    /// the assignment holds so paused.
    pub(crate) fn held_applied(&self, paused: &TopicPartitionList, all: bool) {
        let mut state = self.lock();
        let state = &mut *state;
        if all {
            state.held.applied.clear();
            state.partitions.values_mut().for_each(|p| p.held_in = None);
        }
        for key in paused.elements().iter().map(key_of) {
            // Not tracked yet in the assign callback: `assign` marks it.
            if let Some(partition) = state.partitions.get_mut(&key) {
                partition.held_in = Some(state.intake_round);
            }
            state.held.applied.insert(key);
        }
    }

    /// Partitions revoked: their pause is no longer in effect here.
    pub(crate) fn held_revoked(&self, tpl: &TopicPartitionList) {
        let mut state = self.lock();
        for key in tpl.elements().iter().map(key_of) {
            state.held.applied.remove(&key);
            state.held.high_watermarks.remove(&key);
        }
    }

    /// New partitions: each starts a new generation. Returns the commits refused at an
    /// earlier revoke of partitions that came back, to make now: only those still ahead of
    /// what the group has committed since (`group`, `None` if unknown). Another owner may
    /// have gone further meanwhile, and a commit never moves back. The records they cover
    /// are skipped either way.
    pub(crate) fn assign(
        &self,
        tpl: &TopicPartitionList,
        group: Option<&TopicPartitionList>,
    ) -> TopicPartitionList {
        let mut state = self.lock();
        state.joined = true;
        let mut retry = TopicPartitionList::new();
        for element in tpl.elements() {
            let generation = state.next_generation;
            state.next_generation += 1;
            let key = key_of(&element);
            let ahead = |ours: &i64| {
                group.is_some_and(
                    |group| match group.find_partition(&key.0, key.1).map(|e| e.offset()) {
                        Some(Offset::Offset(theirs)) => theirs < *ours,
                        Some(Offset::Invalid) => true,
                        _ => false,
                    },
                )
            };
            // Records below it were handled here before: skipping them never loses one.
            // Committing it is right only when it is ahead of the group's offset; when that
            // is unknown, the commit waits for records past it.
            let done_below = state.unconfirmed.remove(&key);
            if let Some(offset) = done_below.filter(ahead) {
                retry
                    .add_partition_offset(&key.0, key.1, Offset::Offset(offset))
                    .expect("a valid offset");
            }
            let mut partition = Partition::new(generation, done_below);
            // Paused for an operator in the assign callback, before this.
            partition.held_in = state.held.applied.contains(&key).then_some(state.intake_round);
            state.partitions.insert(key, partition);
        }
        retry
    }

    /// Takes up to `demand` queued records, in order, skipping those of a partition that
    /// already has its [`cap`](Shared::cap) handed out: a partition stalled behind a
    /// retry cannot take the whole pipeline's demand.
    pub(crate) fn take(&self, demand: usize) -> Vec<KafkaMessage> {
        let mut state = self.lock();
        let limit = self.cap(&state);
        let taken = state.partitions.take(demand, limit);
        if !taken.is_empty() {
            state.takes += 1;
            if state.waiting.room > 0 {
                self.room.notify_one();
            }
            if state.partitions.any_queued() {
                self.ready.notify_one();
            }
        }
        taken
    }

    /// Waits, at most `timeout`, until the queue holds fewer than `limit` records of
    /// partitions neither stalled nor paused (see [`Shared::unstalled`]); `false` if it is
    /// still full (or the source stopped or finished).
    pub(crate) fn wait_for_room(&self, limit: usize, timeout: Duration) -> bool {
        let mut state = self.lock();
        state.waiting.room += 1;
        let (mut state, _) = self
            .room
            .wait_timeout_while(state, timeout, |s| {
                self.unstalled(s, Instant::now()) >= limit && !s.stopped && !s.finished
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.waiting.room -= 1;
        self.unstalled(&state, Instant::now()) < limit
    }

    /// Queues a handoff of records copied from librdkafka, in one lock and one wake-up
    /// of the pipeline (see [`State::queue_record`]), at `now`, and ends the intake
    /// round: the partitions it returns, each once, are paused before the next poll.
    /// `last`: the partition of the last record queued and its slot, a hint kept from
    /// one handoff to the next (librdkafka hands out runs of one partition). A record
    /// of a partition not assigned any more (fetched just before its revoke) is dropped.
    pub(crate) fn queue_handoff(
        &self,
        records: impl Iterator<Item = KafkaMetadata>,
        last: &mut Option<(TopicPartition, Slot)>,
        now: Instant,
    ) -> Vec<TopicPartition> {
        let mut full = Vec::new();
        let mut state = self.lock();
        let state = &mut *state;
        let cap = self.cap(state);
        for mut record in records {
            if state.partitions.at(record.slot).is_none() {
                let key = (record.topic_arc().clone(), record.partition());
                let resolved = match &*last {
                    Some((tp, slot)) if *tp == key && state.partitions.at(*slot).is_some() => Some(*slot),
                    _ => state.partitions.slot(&key),
                };
                let Some(slot) = resolved else {
                    continue;
                };
                record.slot = slot;
                *last = Some((key, slot));
            }
            // Once each: one record may find an operator's pause dropped, a later one
            // its stall.
            let pause = state.queue_record(record, cap, self.max_buffered_per_partition, now);
            full.extend(pause.filter(|key| !full.contains(key)));
        }
        state.intake_round += 1;
        self.ready.notify_one();
        full
    }

    /// The drained partitions to resume (see [`Shared::acknowledge`]), taken from the
    /// list: none while every partition is paused (a stall or a stop, undone by its own
    /// resume), nor those an operator holds or that were paused again since (stalled
    /// anew, or a pause librdkafka dropped made again), which stay paused.
    pub(crate) fn drained_to_resume(&self) -> Vec<TopicPartition> {
        let mut state = self.lock();
        let mut resume = std::mem::take(&mut state.to_resume);
        if state.paused_all {
            return Vec::new();
        }
        resume
            .retain(|key| !state.held.contains(key) && !state.partitions.get(key).is_some_and(|p| p.paused));
        resume
    }

    /// Partitions just marked paused whose pause librdkafka refused: they are still
    /// fetched, so their queues count against the poll thread's bound again.
    pub(crate) fn not_paused_after_all(&self, partitions: &[TopicPartition]) {
        let mut state = self.lock();
        for key in partitions {
            if let Some(partition) = state.partitions.get_mut(key) {
                partition.paused = false;
            }
        }
    }

    /// Queued records that the pipeline may take: not those of a partition with its limit
    /// handed out.
    pub(crate) fn takeable(&self, state: &State) -> usize {
        let limit = self.cap(state);
        state
            .partitions
            .values()
            .filter(|p| p.handed_out() < limit)
            .map(Partition::queued)
            .sum()
    }

    /// Queued records that the poll thread's bound counts: all but those of stalled and of
    /// paused partitions, which would otherwise fill the queue and starve every other
    /// partition (a stalled one is paused once it holds `max_buffered_per_partition`; a
    /// paused one is sent nothing more, its queue bounded by that pause). A partition at
    /// its limit whose queue empties quickly counts: its records are taken soon, and were
    /// they not counted, the poll thread would queue more of them until it paused the
    /// partition, dropping librdkafka's prefetch in the ordinary flow of records.
    pub(crate) fn unstalled(&self, state: &State, now: Instant) -> usize {
        let limit = self.cap(state);
        state
            .partitions
            .values()
            .filter(|p| !p.paused && !p.is_stalled(limit, now))
            .map(Partition::queued)
            .sum()
    }

    /// The pipeline has stopped: the poll thread commits a last time and closes. A
    /// revoke draining its partitions stops waiting for acknowledgements that will not
    /// come, and the poll thread waiting for room for takes that will not come.
    pub(crate) fn finish(&self) {
        self.lock().finished = true;
        self.acknowledged.notify_all();
        self.room.notify_all();
    }

    /// The source stops fetching: every queued record is dropped (unacknowledged: never
    /// committed, read again), and a poll thread waiting for room sees the stop at once.
    pub(crate) fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        state.partitions.drop_all_queued();
        self.room.notify_all();
    }

    /// Remembers revoke commits the broker refused.
    pub(crate) fn unconfirmed(&self, commits: &TopicPartitionList) {
        let mut state = self.lock();
        for element in commits.elements() {
            if let Offset::Offset(offset) = element.offset() {
                state.unconfirmed.insert(key_of(&element), offset);
            }
        }
    }

    /// Records offsets the broker confirmed as committed.
    pub(crate) fn confirmed(&self, commits: &TopicPartitionList) {
        let mut state = self.lock();
        for element in commits.elements() {
            let key = key_of(&element);
            // Only up to what this tracking can commit: a commit made before an offset
            // reset, confirmed after it, says nothing of the new tracking's records, and
            // taken for its own it would hold back the new tracking's commits.
            if let (Some(partition), Offset::Offset(offset)) =
                (state.partitions.get_mut(&key), element.offset())
            {
                if partition.offsets.committable().is_some_and(|done| offset <= done) {
                    partition.committed = partition.committed.max(Some(offset));
                }
            }
        }
    }

    /// Revoked partitions: drop their queued records, wait (at most `timeout`) for their
    /// in-flight records to be acknowledged, then return the offsets to commit. The
    /// partitions are forgotten: a late acknowledgement commits nothing.
    pub(crate) fn revoke(&self, tpl: &TopicPartitionList, timeout: Duration) -> TopicPartitionList {
        let revoked: Vec<TopicPartition> = tpl.elements().iter().map(key_of).collect();
        let mut state = self.lock();
        // Never handed out, never acknowledged: the next owner reads them again.
        state.drop_queued(&revoked);
        let deadline = Instant::now() + timeout;
        let busy = |state: &State| {
            revoked
                .iter()
                .any(|tp| state.partitions.get(tp).is_some_and(|p| p.handed_out() > 0))
        };
        // Once finished (the pipeline has stopped), nothing more is acknowledged: what
        // was is committed at once.
        while busy(&state) && !state.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    ?timeout,
                    "revoked partitions still had messages in flight; committing what was acknowledged"
                );
                break;
            }
            state.waiting.acknowledged += 1;
            state = self
                .acknowledged
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
            state.waiting.acknowledged -= 1;
        }
        let mut commits = TopicPartitionList::new();
        for tp in &revoked {
            if let Some(partition) = state.partitions.remove(tp) {
                add_commit(&mut commits, tp, &partition, true);
            }
        }
        state.to_resume.retain(|tp| !revoked.contains(tp));
        self.wake_if_takeable(&state);
        commits
    }

    /// Lost partitions (the session expired; they may be another consumer's already):
    /// their queued records are dropped and they are forgotten at once, with no drain and
    /// no commit. Acknowledgements of their records in flight count for nothing. What was
    /// acknowledged before the loss is remembered as a refused revoke commit is: should a
    /// partition come back to this consumer, it is committed then, under the new
    /// assignment, if still ahead of the group, and those records are not handled twice.
    pub(crate) fn lose(&self, tpl: &TopicPartitionList) {
        let lost: Vec<TopicPartition> = tpl.elements().iter().map(key_of).collect();
        let mut state = self.lock();
        state.drop_queued(&lost);
        for tp in &lost {
            let Some(partition) = state.partitions.remove(tp) else {
                continue;
            };
            if let Some(done) = partition.offsets.committable() {
                if partition.committed.is_none_or(|c| c < done) {
                    state.unconfirmed.insert(tp.clone(), done);
                }
            }
        }
        state.to_resume.retain(|tp| !lost.contains(tp));
        self.wake_if_takeable(&state);
        drop(state);
        self.acknowledged.notify_all();
    }

    /// The offsets to commit: those past the last confirmed commit, or with `all`, every
    /// partition's.
    pub(crate) fn commits(&self, all: bool) -> TopicPartitionList {
        let state = self.lock();
        let mut commits = TopicPartitionList::new();
        for (tp, partition) in state.partitions.iter() {
            add_commit(&mut commits, tp, partition, all);
        }
        commits
    }

    /// Records the acknowledgement of `records`: those of a partition revoked since are
    /// ignored.
    pub(crate) fn acknowledge<'a>(&self, records: impl Iterator<Item = &'a KafkaMetadata>) {
        let mut state = self.lock();
        let mut resume = Vec::new();
        let now = Instant::now();
        for record in records {
            let Some(partition) = state.partitions.at(record.slot) else {
                continue;
            };
            let before = partition.offsets.committable();
            partition.offsets.acknowledged(record.offset());
            if partition.offsets.committable() != before {
                partition.progressed_at = now;
            }
            // Resumed on what paused it, the records it holds (which only an
            // acknowledgement lowers): once down to half, so that neither a full queue nor
            // one chunk's acknowledgement makes it flap, refetching librdkafka's prefetch.
            let held = partition.handed_out() + partition.queued();
            if partition.paused && held <= self.max_buffered_per_partition / 2 {
                partition.paused = false;
                resume.push((record.topic_arc().clone(), record.partition()));
            }
        }
        state.to_resume.extend(resume);
        self.wake_if_takeable(&state);
        let waiting = state.waiting.acknowledged > 0;
        drop(state);
        if waiting {
            self.acknowledged.notify_all();
        }
    }

    /// Wakes a receive waiting for records if some queued ones may now be taken. Queued
    /// already, they bring no new wake-up of their own: a partition's records become
    /// takeable when its own records are acknowledged, and also when its cap grows
    /// because other partitions finished or went away.
    fn wake_if_takeable(&self, state: &State) {
        if state.partitions.any_queued() && self.takeable(state) > 0 {
            self.ready.notify_one();
        }
    }
}

/// Adds `partition`'s committable offset to `commits` if it is past the confirmed one
/// (or, with `all`, if there is one).
fn add_commit(
    commits: &mut TopicPartitionList,
    (topic, partition): &TopicPartition,
    state: &Partition,
    all: bool,
) {
    match state.offsets.committable() {
        Some(offset) if all || state.committed.is_none_or(|c| c < offset) => {
            commits
                .add_partition_offset(topic, *partition, Offset::Offset(offset))
                .expect("a valid offset");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::pin::Pin;

    use longshore::Message;
    use proptest::prelude::*;
    use tokio::sync::futures::Notified;

    use super::*;
    use crate::partitions::STALLED_AFTER;

    const TOPIC: &str = "t";

    fn list(partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        partitions.iter().for_each(|&p| {
            tpl.add_partition(TOPIC, p);
        });
        tpl
    }

    /// (partition, offset) of each commit in `commits`.
    fn offsets(commits: &TopicPartitionList) -> BTreeMap<i32, i64> {
        let offset = |e: &TopicPartitionListElem<'_>| match e.offset() {
            Offset::Offset(o) => o,
            other => panic!("not an offset: {other:?}"),
        };
        commits
            .elements()
            .iter()
            .map(|e| (e.partition(), offset(e)))
            .collect()
    }

    /// What the poll thread does with a fetched record of an assigned partition.
    fn receive(shared: &Shared, partition: i32, offset: i64) {
        receive_at(shared, partition, offset, Instant::now());
    }

    fn receive_at(shared: &Shared, partition: i32, offset: i64, now: Instant) {
        queue_at(shared, partition, offset, now);
    }

    /// Queues a record; the partition to pause, if any.
    fn queue_at(shared: &Shared, partition: i32, offset: i64, now: Instant) -> Option<TopicPartition> {
        let mut state = shared.lock();
        let mut record = KafkaMetadata::new(TOPIC, partition, offset);
        record.slot = state
            .partitions
            .slot(&(Arc::from(TOPIC), partition))
            .expect("assigned");
        let cap = shared.cap(&state);
        state.queue_record(record, cap, shared.max_buffered_per_partition, now)
    }

    #[test]
    fn partitions_paused_for_a_stall_or_by_an_operator_are_not_resumed() {
        let shared = Shared::new(100);
        shared.assign(&list(&[0, 1, 2, 3]), None);
        {
            let mut state = shared.lock();
            state.held.partitions.insert((Arc::from(TOPIC), 1));
            let stalled = state
                .partitions
                .get_mut(&(Arc::from(TOPIC), 2))
                .expect("assigned");
            stalled.paused = true;
            state.unconfirmed.insert((Arc::from(TOPIC), 3), 7);
        }
        let partitions = |tpl: &TopicPartitionList| {
            assert!(tpl.elements().iter().all(|e| e.offset() == Offset::Invalid));
            tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>()
        };
        // Partition 4 is not assigned: neither paused nor held.
        let all = list(&[0, 1, 2, 3, 4]);
        assert_eq!(partitions(&shared.not_paused(&all)), [0, 3, 4]);
        assert_eq!(partitions(&shared.held(&all)), [1]);
        assert_eq!(partitions(&shared.not_held(&all)), [0, 2, 3, 4]);
        // A commit refused earlier, with its offset.
        assert_eq!(offsets(&shared.pending(&all)), BTreeMap::from([(3, 7)]));
    }

    #[test]
    fn a_poll_thread_waiting_for_room_is_woken_by_the_take_that_makes_it() {
        let shared = Arc::new(Shared::new(100));
        shared.assign(&list(&[0]), None);
        (0..3).for_each(|offset| receive(&shared, 0, offset));
        // The queue is full at 3: the poll thread waits (signals go only to a waiter).
        let timeout = Duration::from_secs(30);
        let waiter = std::thread::spawn({
            let shared = shared.clone();
            move || {
                let started = Instant::now();
                (shared.wait_for_room(3, timeout), started.elapsed())
            }
        });
        while shared.lock().waiting.room == 0 {
            std::thread::yield_now();
        }
        assert_eq!(shared.take(1).len(), 1);
        let (room, took) = waiter.join().expect("the waiter");
        assert!(room, "a take made room");
        assert!(
            took < timeout / 2,
            "the waiter slept {took:?}: the take did not wake it"
        );
        assert_eq!(shared.lock().waiting.room, 0);
    }

    #[test]
    fn a_revoke_draining_its_partitions_ends_once_the_pipeline_has_finished() {
        let shared = Arc::new(Shared::new(100));
        shared.assign(&list(&[0]), None);
        (0..2).for_each(|offset| receive(&shared, 0, offset));
        let taken = shared.take(2);
        shared.acknowledge(taken[..1].iter().map(Message::metadata));
        // One record in flight: the revoke waits for it, up to its timeout.
        let timeout = Duration::from_secs(30);
        let revoke = std::thread::spawn({
            let shared = shared.clone();
            move || {
                let started = Instant::now();
                (offsets(&shared.revoke(&list(&[0]), timeout)), started.elapsed())
            }
        });
        while shared.lock().waiting.acknowledged == 0 {
            std::thread::yield_now();
        }
        // The pipeline stops: the record in flight will never be acknowledged.
        shared.finish();
        let (commits, took) = revoke.join().expect("the revoke");
        assert_eq!(commits, BTreeMap::from([(0, 1)]), "what was acknowledged");
        assert!(
            took < timeout / 2,
            "the revoke waited {took:?} after the pipeline finished"
        );
    }

    #[test]
    fn an_acknowledgement_after_the_revoke_commits_nothing() {
        let shared = Shared::new(100);
        shared.assign(&list(&[0]), None);
        (0..3).for_each(|offset| receive(&shared, 0, offset));
        let taken = shared.take(3);
        shared.acknowledge(taken[..1].iter().map(Message::metadata));
        // 1 and 2 are still in flight: the revoke commits 1 and forgets the partition.
        assert_eq!(
            offsets(&shared.revoke(&list(&[0]), Duration::ZERO)),
            BTreeMap::from([(0, 1)])
        );
        // It comes back: the earlier assignment's late acknowledgements count for nothing.
        shared.assign(&list(&[0]), None);
        shared.acknowledge(taken[1..].iter().map(Message::metadata));
        assert!(offsets(&shared.commits(true)).is_empty());
        // Read again from the committed offset, and acknowledged under this assignment.
        receive(&shared, 0, 1);
        let again = shared.take(1);
        shared.acknowledge(again.iter().map(Message::metadata));
        assert_eq!(offsets(&shared.commits(false)), BTreeMap::from([(0, 2)]));
    }

    #[test]
    fn acknowledgements_during_a_revokes_drain_see_its_queued_records_gone() {
        let shared = Arc::new(Shared::new(100));
        // One record of each partition handed out at a time.
        shared.set_max_in_flight(2);
        shared.assign(&list(&[0, 1]), None);
        (0..2).for_each(|offset| receive(&shared, 1, offset));
        (0..3).for_each(|offset| receive(&shared, 0, offset));
        let taken = shared.take(10);
        let (of_zero, of_one): (Vec<_>, Vec<_>) = taken.iter().partition(|m| m.metadata().partition() == 0);
        assert_eq!((of_zero.len(), of_one.len()), (1, 1));
        // Partition 0 is revoked with one record in flight and two queued: the revoke
        // drops those two and waits for the one in flight.
        let timeout = Duration::from_secs(30);
        let revoke = std::thread::spawn({
            let shared = shared.clone();
            move || {
                let started = Instant::now();
                let commits = offsets(&shared.revoke(&list(&[0]), timeout));
                (commits, started.elapsed())
            }
        });
        while shared
            .lock()
            .partitions
            .values()
            .map(Partition::queued)
            .sum::<usize>()
            == 3
        {
            std::thread::yield_now();
        }
        // Meanwhile partition 1 is acknowledged: what may be taken is counted without the
        // dropped records (this overflowed, the partition still counting two queued).
        shared.acknowledge(of_one.iter().map(|m| m.metadata()));
        shared.acknowledge(of_zero.iter().map(|m| m.metadata()));
        // The revoke ends once the record in flight is acknowledged, not at its timeout.
        let (commits, took) = revoke.join().expect("the revoke");
        assert_eq!(commits, BTreeMap::from([(0, 1)]));
        assert!(
            took < timeout / 2,
            "the revoke waited {took:?}, for its dropped records"
        );
        assert_eq!(shared.take(10).len(), 1, "partition 1's second record");
    }

    #[test]
    fn a_blocked_partition_is_paused_once_it_holds_its_buffer_and_resumed_at_half() {
        let shared = Shared::new(8);
        // Two assigned: each may have 2 handed out.
        shared.set_max_in_flight(4);
        shared.assign(&list(&[0, 1]), None);
        let paused = |shared: &Shared| {
            shared
                .lock()
                .partitions
                .get(&(Arc::from(TOPIC), 0))
                .unwrap()
                .paused
        };
        let start = Instant::now();
        (0..2).for_each(|offset| receive_at(&shared, 0, offset, start));
        let first = shared.take(10);
        assert_eq!(first.len(), 2);
        // Blocked: what it queues now cannot be taken. Holding its buffer of 8 while its
        // queue is young, it is busy, not paused; once its queue has not emptied for long
        // enough, it is stalled, and paused.
        (2..8).for_each(|offset| receive_at(&shared, 0, offset, start));
        assert!(!paused(&shared), "holds 8, queued just now");
        receive_at(&shared, 0, 8, start + STALLED_AFTER);
        assert!(paused(&shared), "holds 9, stalled");
        // A chunk acknowledged, its queue still full: no resume (it would refetch and be
        // paused again at once). Paused, its queue is left out of the poll thread's bound
        // even below its cap.
        shared.acknowledge(first.iter().map(Message::metadata));
        assert!(paused(&shared), "holds 7");
        assert_eq!(shared.unstalled(&shared.lock(), start), 0, "paused: not counted");
        for held in [5, 3] {
            let taken = shared.take(10);
            assert_eq!(taken.len(), 2);
            shared.acknowledge(taken.iter().map(Message::metadata));
            assert_eq!(
                paused(&shared),
                held > 4,
                "holds {held}; resumed at half its buffer"
            );
        }
        assert_eq!(shared.lock().to_resume, vec![(Arc::from(TOPIC), 0)]);
    }

    /// Partition 0 (of two, each with a buffer of 4 and a share of 2 in flight) with its
    /// share out and offsets 1 to 3 queued at `start`: stalled once `later` comes.
    fn stalling() -> (Arc<Shared>, Instant, Instant) {
        let shared = Shared::new(4);
        shared.set_max_in_flight(2);
        shared.assign(&list(&[0, 1]), None);
        let start = Instant::now();
        receive_at(&shared, 0, 0, start);
        assert_eq!(shared.take(10).len(), 1, "its share of 2 among two partitions");
        (1..4).for_each(|offset| receive_at(&shared, 0, offset, start));
        (shared, start, start + STALLED_AFTER)
    }

    #[test]
    fn a_pause_librdkafka_refused_leaves_the_partition_counted_and_paused_again_later() {
        let (shared, start, later) = stalling();
        receive_at(&shared, 0, 4, later);
        let key = (Arc::from(TOPIC), 0);
        let paused = |shared: &Shared| shared.lock().partitions.get(&key).unwrap().paused;
        assert!(paused(&shared), "stalled, holding its buffer");
        assert_eq!(shared.unstalled(&shared.lock(), start), 0);
        // The pause refused: still fetched, so counted against the bound again.
        shared.not_paused_after_all(std::slice::from_ref(&key));
        assert!(!paused(&shared));
        assert_eq!(shared.unstalled(&shared.lock(), start), 4);
        receive_at(&shared, 0, 5, later);
        assert!(paused(&shared), "paused again with its next record");
    }

    #[test]
    fn a_paused_partition_whose_records_still_come_in_a_later_round_is_paused_again() {
        let (shared, _, later) = stalling();
        let key = (Arc::from(TOPIC), 0);
        assert_eq!(
            queue_at(&shared, 0, 4, later),
            Some(key.clone()),
            "stalled: paused"
        );
        // Polled in the same round, before the poll thread paused it: expected.
        assert_eq!(queue_at(&shared, 0, 5, later), None);
        // The round ends; the poll thread pauses the partition. A record of it in a later
        // round means librdkafka dropped the pause: it is paused again, once a round.
        for offset in [6, 8] {
            shared.lock().intake_round += 1;
            assert_eq!(queue_at(&shared, 0, offset, later), Some(key.clone()), "{offset}");
            assert_eq!(queue_at(&shared, 0, offset + 1, later), None, "{offset}");
        }
    }

    #[test]
    fn a_partition_an_operator_paused_whose_records_still_come_in_a_later_round_is_paused_again() {
        let shared = Shared::new(100);
        shared.assign(&list(&[0, 1]), None);
        let (one, two) = ((Arc::from(TOPIC), 1), (Arc::from(TOPIC), 2));
        {
            let mut state = shared.lock();
            state.intake_round = 3;
            state.held.partitions.extend([one.clone(), two.clone()]);
        }
        shared.held_applied(&list(&[1]), true);
        let next_round = || shared.lock().intake_round += 1;
        // Polled in the round the pause was made in, or of another partition: expected.
        assert_eq!(queue_at(&shared, 1, 0, Instant::now()), None);
        next_round();
        assert_eq!(queue_at(&shared, 0, 0, Instant::now()), None);
        // Of it, a round later: librdkafka dropped the pause. Paused again, once a round.
        assert_eq!(queue_at(&shared, 1, 1, Instant::now()), Some(one.clone()));
        assert_eq!(queue_at(&shared, 1, 2, Instant::now()), None);
        next_round();
        assert_eq!(queue_at(&shared, 1, 3, Instant::now()), Some(one.clone()));
        // Resumed by the operator, not applied yet: not paused again.
        shared.lock().held.partitions.remove(&one);
        next_round();
        assert_eq!(queue_at(&shared, 1, 4, Instant::now()), None);
        // Paused in the assign callback, before the partition is tracked: marked by the
        // assignment.
        shared.held_applied(&list(&[2]), false);
        shared.assign(&list(&[2]), None);
        assert_eq!(queue_at(&shared, 2, 0, Instant::now()), None);
        next_round();
        assert_eq!(queue_at(&shared, 2, 1, Instant::now()), Some(two.clone()));
        // Its offset going back restarts its tracking, still paused for the operator.
        next_round();
        assert_eq!(queue_at(&shared, 2, 0, Instant::now()), Some(two));
    }

    #[test]
    fn a_handoff_ends_its_intake_round_and_asks_to_pause_each_partition_once() {
        // Partition 0 of two (a buffer of 4, a share of 2 in flight): one record out and
        // one queued at `start`; paused by an operator.
        let shared = Shared::new(4);
        shared.set_max_in_flight(2);
        shared.assign(&list(&[0, 1]), None);
        let start = Instant::now();
        receive_at(&shared, 0, 0, start);
        assert_eq!(shared.take(10).len(), 1);
        receive_at(&shared, 0, 1, start);
        let key = (Arc::from(TOPIC), 0);
        shared.lock().held.partitions.insert(key.clone());
        shared.held_applied(&list(&[0]), true);
        let mut last = None;
        let later = start + STALLED_AFTER;
        let mut handoff = |partition: i32, offsets: std::ops::Range<i64>| {
            let records = offsets.map(|offset| KafkaMetadata::new(TOPIC, partition, offset));
            shared.queue_handoff(records, &mut last, later)
        };
        // An empty handoff ends the round the pause was made in, too.
        assert_eq!(handoff(0, 0..0), vec![]);
        // In the next round: offset 2 finds the operator's pause dropped, offset 3 the
        // partition stalled holding its buffer. Paused once.
        assert_eq!(handoff(0, 2..4), vec![key.clone()]);
        // The handoff ended its round: a record in the next one is a pause dropped again.
        assert_eq!(handoff(0, 4..5), vec![key.clone()]);
        // A record of a partition not assigned (revoked meanwhile) is dropped.
        assert_eq!(handoff(5, 0..1), vec![]);
        let state = shared.lock();
        assert_eq!(state.partitions.get(&key).unwrap().queued(), 4);
        assert!(state.partitions.get(&(Arc::from(TOPIC), 5)).is_none());
    }

    #[test]
    fn a_drained_partition_is_resumed_unless_held_or_paused_again_since() {
        let shared = Shared::new(4);
        shared.set_max_in_flight(2);
        shared.assign(&list(&[0, 1]), None);
        let key = (Arc::from(TOPIC), 0);
        let start = Instant::now();
        let later = start + STALLED_AFTER;
        receive_at(&shared, 0, 0, start);
        let mut out = shared.take(10);
        (1..4).for_each(|offset| receive_at(&shared, 0, offset, start));
        // Records come until it is stalled holding its buffer: paused.
        let mut next = 4;
        let mut stall = || {
            let first = next;
            while queue_at(&shared, 0, next, later).is_none() {
                next += 1;
                assert!(next < first + 4, "paused within a buffer's worth");
            }
            next += 1;
        };
        // Acknowledged and taken one record at a time, down to half its buffer: drained.
        let drain = |out: &mut Vec<KafkaMessage>| {
            for _ in 0..4 {
                if !shared.lock().to_resume.is_empty() {
                    return;
                }
                shared.acknowledge(out.iter().map(Message::metadata));
                *out = shared.take(10);
            }
            panic!("not drained");
        };
        stall();
        drain(&mut out);
        assert_eq!(shared.drained_to_resume(), vec![key.clone()]);
        assert!(shared.lock().to_resume.is_empty(), "taken");
        // Drained, then stalled again before the poll thread resumed it: stays paused.
        stall();
        drain(&mut out);
        stall();
        assert_eq!(shared.drained_to_resume(), vec![]);
        // Drained, then paused by an operator: stays paused.
        drain(&mut out);
        shared.lock().held.partitions.insert(key.clone());
        assert_eq!(shared.drained_to_resume(), vec![]);
        // Drained while every partition is paused (a stall or a stop): their own resume
        // undoes it.
        shared.lock().held.partitions.clear();
        stall();
        drain(&mut out);
        shared.lock().paused_all = true;
        assert_eq!(shared.drained_to_resume(), vec![]);
        assert!(shared.lock().to_resume.is_empty(), "taken");
    }

    #[test]
    fn a_busy_partition_at_its_cap_is_not_paused_and_counts_against_the_bound_until_its_queue_lingers() {
        let shared = Shared::new(8);
        shared.set_max_in_flight(4);
        shared.assign(&list(&[0, 1]), None);
        let zero = |shared: &Shared| {
            let state = shared.lock();
            let p = state.partitions.get(&(Arc::from(TOPIC), 0)).unwrap();
            (p.paused, p.queued())
        };
        let start = Instant::now();
        (0..2).for_each(|offset| receive_at(&shared, 0, offset, start));
        let first = shared.take(10);
        assert_eq!(first.len(), 2);
        // At its cap, its records just queued: busy, not stalled. What it queues cannot be
        // taken yet, but is counted against the bound, so that the poll thread stops there
        // instead of pausing it (which would drop librdkafka's prefetch).
        (2..12).for_each(|offset| receive_at(&shared, 0, offset, start));
        assert_eq!(zero(&shared), (false, 10), "busy, over its buffer, not paused");
        assert_eq!(shared.takeable(&shared.lock()), 0);
        assert_eq!(shared.unstalled(&shared.lock(), start), 10);
        // Its records are acknowledged and the next ones taken, but its queue never
        // empties: taken slower than it fills (or behind a record that never finishes).
        shared.acknowledge(first.iter().map(Message::metadata));
        assert_eq!(shared.take(10).len(), 2);
        let later = start + STALLED_AFTER;
        assert_eq!(
            shared.unstalled(&shared.lock(), later - Duration::from_millis(1)),
            8
        );
        // Queued without a break for long enough: stalled. Its records leave the count,
        // so the poll thread takes the other partitions' records again, and its next one
        // pauses it.
        assert_eq!(shared.unstalled(&shared.lock(), later), 0);
        receive_at(&shared, 1, 0, later);
        assert_eq!(shared.unstalled(&shared.lock(), later), 1);
        assert_eq!(shared.take(10).len(), 1, "the other partition's record");
        receive_at(&shared, 0, 12, later);
        assert_eq!(zero(&shared), (true, 9), "stalled and over its buffer: paused");
    }

    #[test]
    fn a_commit_confirmed_after_an_offset_reset_never_holds_back_the_new_tracking() {
        let shared = Shared::new(100);
        shared.assign(&list(&[0]), None);
        (0..5).for_each(|offset| receive(&shared, 0, offset));
        let taken = shared.take(5);
        shared.acknowledge(taken.iter().map(Message::metadata));
        let in_flight = shared.commits(false);
        assert_eq!(offsets(&in_flight), BTreeMap::from([(0, 5)]));
        // The offset goes back to 0 while that commit is in flight; then it is confirmed.
        receive(&shared, 0, 0);
        shared.confirmed(&in_flight);
        (1..3).for_each(|offset| receive(&shared, 0, offset));
        let again = shared.take(3);
        shared.acknowledge(again.iter().map(Message::metadata));
        assert_eq!(offsets(&shared.commits(false)), BTreeMap::from([(0, 3)]));
    }

    #[test]
    fn lost_partitions_are_let_go_at_once_and_their_acknowledgements_count_for_nothing() {
        let shared = Shared::new(100);
        shared.assign(&list(&[0, 1]), None);
        (0..4).for_each(|offset| receive(&shared, 0, offset));
        receive(&shared, 1, 0);
        let taken = shared.take(2);
        shared.acknowledge(taken[..1].iter().map(Message::metadata));
        // Lost with one record in flight and two queued: no wait, no commit.
        let started = Instant::now();
        shared.lose(&list(&[0]));
        assert!(started.elapsed() < Duration::from_millis(100));
        shared.acknowledge(taken[1..].iter().map(Message::metadata));
        assert_eq!(offsets(&shared.commits(true)), BTreeMap::from([(1, 0)]));
        // Its queued records are never handed out; the other partition's are.
        let rest = shared.take(10);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].metadata().partition(), 1);
        // What was acknowledged before the loss (offset 0, not the one after it) is kept
        // for a return of the partition to this consumer.
        assert_eq!(offsets(&shared.pending(&list(&[0]))), BTreeMap::from([(0, 1)]));
    }

    #[test]
    fn one_partition_holds_at_most_its_share_of_the_pipelines_in_flight_limit() {
        let shared = Shared::new(1_000);
        shared.set_max_in_flight(128);
        shared.assign(&list(&[0, 1, 2, 3, 4, 5, 6, 7]), None);
        (0..200).for_each(|offset| receive(&shared, 0, offset));
        (1..8).for_each(|p| (0..10).for_each(|offset| receive(&shared, p, offset)));
        // Partition 0 is stuck: an eighth of 128 handed out, then the others'.
        let taken = shared.take(128);
        let of = |p: i32| taken.iter().filter(|m| m.metadata().partition() == p).count();
        assert_eq!(of(0), 16);
        assert!((1..8).all(|p| of(p) == 10));
        assert_eq!(shared.take(128).len(), 0, "partition 0 is at its cap");
        // An acknowledgement below the cap wakes a receive waiting for records: they are
        // queued already, so no new record would.
        let earlier = shared.ready.notified();
        tokio::pin!(earlier);
        earlier.as_mut().enable(); // takes the wake-up the takes left
        let woken = shared.ready.notified();
        tokio::pin!(woken);
        assert!(!woken.as_mut().enable());
        let of_zero: Vec<_> = taken.iter().filter(|m| m.metadata().partition() == 0).collect();
        shared.acknowledge(of_zero.iter().take(1).map(|m| m.metadata()));
        assert!(woken.as_mut().enable(), "the waiting receive is woken");
        assert_eq!(shared.take(128).len(), 1);
        // The others finished: partition 0 alone may now use a quarter (of 8 assigned).
        let others: Vec<_> = taken.iter().filter(|m| m.metadata().partition() != 0).collect();
        shared.acknowledge(others.iter().map(|m| m.metadata()));
        assert_eq!(shared.take(200).len(), 32 - 16);
        // A single partition may use every credit.
        let single = Shared::new(1_000);
        single.set_max_in_flight(128);
        single.assign(&list(&[0]), None);
        (0..200).for_each(|offset| receive(&single, 0, offset));
        assert_eq!(single.take(200).len(), 128);
    }

    /// Records `commits` as the group's, checking that none passes a record received and
    /// not acknowledged under the current assignment, and that none moves backwards.
    fn check(
        group: &mut BTreeMap<i32, i64>,
        commits: &TopicPartitionList,
        received: &BTreeMap<i32, BTreeSet<i64>>,
        acked: &BTreeMap<i32, BTreeSet<i64>>,
    ) {
        for (partition, offset) in offsets(commits) {
            let open = received[&partition]
                .difference(&acked[&partition])
                .next()
                .copied();
            assert!(open.is_none_or(|o| offset <= o), "{offset} passes {open:?}");
            let before = group.insert(partition, offset).unwrap_or(0);
            assert!(offset >= before, "commit moved back from {before} to {offset}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The next record of a partition arrives (if assigned).
        Receive(i32),
        /// The pipeline takes up to n records.
        Take(usize),
        /// The pipeline acknowledges the i-th (modulo) record it holds.
        Ack(usize),
        Revoke(i32),
        Assign(i32),
        /// The partition's offset goes back (an offset reset, a truncated log): the next
        /// record read is at the offset the group committed, or at 0.
        Reset(i32, bool),
    }

    /// Operations on partitions `0..partitions`.
    fn op(partitions: i32) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..partitions).prop_map(Op::Receive),
            2 => (1..5usize).prop_map(Op::Take),
            4 => any::<usize>().prop_map(Op::Ack),
            1 => (0..partitions).prop_map(Op::Revoke),
            1 => (0..partitions).prop_map(Op::Assign),
            1 => (0..partitions, any::<bool>()).prop_map(|(p, earliest)| Op::Reset(p, earliest)),
        ]
    }

    /// What the pipeline's receive does: takes what it may, and when that is nothing,
    /// waits on `ready` (registered before the take, as `receive` does). Returns the
    /// records taken, or the wait.
    fn receive_or_wait(shared: &Shared, demand: usize) -> Result<Vec<KafkaMessage>, Pin<Box<Notified<'_>>>> {
        let mut ready = Box::pin(shared.ready.notified());
        ready.as_mut().enable();
        let taken = shared.take(demand);
        if taken.is_empty() {
            Err(ready)
        } else {
            Ok(taken)
        }
    }

    proptest! {
        /// Random receipts, takes, acknowledgements and rebalances over a few partitions
        /// sharing a small in-flight limit: a receive waiting for records is always woken
        /// while some can be taken (a partition's cap grows when others finish, with no
        /// new record arriving to wake it), and once the pipeline acknowledges what it
        /// holds, every queued record is handed out.
        #[test]
        fn a_waiting_receive_is_woken_whenever_records_can_be_taken(
            limit in 1..12usize,
            ops in proptest::collection::vec(op(8), 1..300),
        ) {
            let shared = Shared::new(1_000);
            shared.set_max_in_flight(limit);
            let mut assigned: BTreeSet<i32> = BTreeSet::new();
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            let mut held: Vec<KafkaMessage> = Vec::new();
            let mut waiting = None;
            for op in ops {
                match op {
                    Op::Receive(p) | Op::Reset(p, _) if assigned.contains(&p) => {
                        let offset = next[&p];
                        receive(&shared, p, offset);
                        next.insert(p, offset + 1);
                        // As the poll thread's intake does after queueing.
                        shared.ready.notify_one();
                    }
                    Op::Take(n) if waiting.is_none() => match receive_or_wait(&shared, n) {
                        Ok(taken) => held.extend(taken),
                        Err(wait) => waiting = Some(wait),
                    },
                    Op::Ack(i) if !held.is_empty() => {
                        let message = held.swap_remove(i % held.len());
                        shared.acknowledge(std::iter::once(message.metadata()));
                    }
                    Op::Revoke(p) if assigned.remove(&p) => {
                        shared.revoke(&list(&[p]), Duration::ZERO);
                    }
                    Op::Assign(p) if assigned.insert(p) => {
                        shared.assign(&list(&[p]), None);
                        next.insert(p, 0);
                    }
                    _ => {}
                }
                shared.lock().partitions.check_ready();
                // A woken receive takes again (and may wait again).
                while let Some(wait) = waiting.as_mut() {
                    let woken = wait.as_mut().enable();
                    let takeable = shared.takeable(&shared.lock());
                    prop_assert!(woken || takeable == 0, "{takeable} takeable, the receive asleep");
                    if !woken {
                        break;
                    }
                    waiting = None;
                    match receive_or_wait(&shared, usize::MAX) {
                        Ok(taken) => held.extend(taken),
                        Err(wait) => waiting = Some(wait),
                    }
                }
            }
            // The pipeline finishes what it holds, and takes on until nothing is left.
            waiting = None;
            loop {
                shared.acknowledge(std::mem::take(&mut held).iter().map(Message::metadata));
                match receive_or_wait(&shared, usize::MAX) {
                    Ok(taken) => held.extend(taken),
                    Err(_) => break,
                }
            }
            prop_assert!(!shared.lock().partitions.any_queued());
            drop(waiting);
        }

        /// Random receipts, takes, acknowledgements in any order, rebalances and offset
        /// resets: no commit passes a record not acknowledged under the partition's current
        /// tracking, and none moves backwards; once everything is acknowledged, each
        /// partition commits up to its last record (or stays at its earlier commit).
        #[test]
        fn commits_never_pass_an_unfinished_record(ops in proptest::collection::vec(op(3), 1..200)) {
            let shared = Shared::new(1_000);
            // What the group has: the committed offset per partition, and where the next
            // read of each starts (the last fetched offset plus one, reset to the committed
            // offset when the partition is assigned again).
            let mut group: BTreeMap<i32, i64> = BTreeMap::new();
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            let mut assigned: BTreeSet<i32> = BTreeSet::new();
            // Per partition, records received under the current assignment, and those acknowledged.
            let mut received: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
            let mut acked: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
            let mut held: Vec<KafkaMessage> = Vec::new();
            for op in ops {
                match op {
                    Op::Receive(p) if assigned.contains(&p) => {
                        let offset = next[&p];
                        receive(&shared, p, offset);
                        received.get_mut(&p).unwrap().insert(offset);
                        next.insert(p, offset + 1);
                    }
                    Op::Receive(_) => {}
                    Op::Take(n) => held.extend(shared.take(n)),
                    Op::Ack(i) if !held.is_empty() => {
                        let message = held.swap_remove(i % held.len());
                        let record = message.metadata();
                        // Counts only if taken under the current assignment.
                        if shared.lock().partitions.at(record.slot).is_some() {
                            acked.get_mut(&record.partition()).unwrap().insert(record.offset());
                        }
                        shared.acknowledge(std::iter::once(record));
                    }
                    Op::Ack(_) => {}
                    Op::Revoke(p) if assigned.remove(&p) => {
                        let commits = shared.revoke(&list(&[p]), Duration::ZERO);
                        check(&mut group, &commits, &received, &acked);
                    }
                    Op::Revoke(_) => {}
                    Op::Assign(p) if assigned.insert(p) => {
                        shared.assign(&list(&[p]), None);
                        next.insert(p, group.get(&p).copied().unwrap_or(0));
                        received.insert(p, BTreeSet::new());
                        acked.insert(p, BTreeSet::new());
                    }
                    Op::Assign(_) => {}
                    Op::Reset(p, earliest) if assigned.contains(&p) => {
                        let back = if earliest { 0 } else { group.get(&p).copied().unwrap_or(0) };
                        if back < next[&p] {
                            // The tracking starts again: what was received before counts
                            // for nothing, and the commits of the new epoch start from
                            // its position (the old offset may no longer exist).
                            group.remove(&p);
                            next.insert(p, back);
                            received.insert(p, BTreeSet::new());
                            acked.insert(p, BTreeSet::new());
                            receive(&shared, p, back);
                            received.get_mut(&p).unwrap().insert(back);
                            next.insert(p, back + 1);
                        }
                    }
                    Op::Reset(..) => {}
                }
                shared.lock().partitions.check_ready();
                let commits = shared.commits(false);
                check(&mut group, &commits, &received, &acked);
                // The broker confirms them, as its commit callback would.
                shared.confirmed(&commits);
            }
            // Everything still held is finished: each assigned partition reaches its end.
            held.extend(shared.take(usize::MAX));
            for message in &held {
                if shared.lock().partitions.at(message.metadata().slot).is_some() {
                    let record = message.metadata();
                    acked.get_mut(&record.partition()).unwrap().insert(record.offset());
                }
            }
            shared.acknowledge(held.iter().map(Message::metadata));
            let last = shared.commits(true);
            check(&mut group, &last, &received, &acked);
            for p in &assigned {
                if let Some(&end) = received[p].last() {
                    let expected = (end + 1).max(group.get(p).copied().unwrap_or(0));
                    let committed = offsets(&last).get(p).copied().or(group.get(p).copied());
                    prop_assert_eq!(committed, Some(expected));
                }
            }
        }
    }
}
