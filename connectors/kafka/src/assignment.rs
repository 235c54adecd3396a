//! What the consumer owns right now: the assigned partitions with their offsets, and the
//! records fetched but not yet handed to the pipeline. Shared by the poll thread, the
//! rebalance callbacks and the acknowledger.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use longshore::Message;
use rdkafka::topic_partition_list::TopicPartitionListElem;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;

use crate::offsets::PartitionOffsets;
use crate::partitions::{Partition, Partitions, TopicPartition};
use crate::record::KafkaRecord;

/// The key of one element of a partition list.
fn key_of(element: &TopicPartitionListElem<'_>) -> TopicPartition {
    (Arc::from(element.topic()), element.partition())
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) partitions: Partitions,
    /// Fetched, not yet asked for. Bounded: each partition holds at most
    /// `max_buffered_per_partition` between fetch and acknowledgement.
    pub(crate) queue: VecDeque<Message<KafkaRecord>>,
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
}

impl State {
    /// Queues a fetched record of the assigned partition at its slot, unless it was
    /// acknowledged under an earlier assignment. Returns its partition if that must now be
    /// paused: `limit` of its records handed out and unacknowledged.
    pub(crate) fn queue_record(&mut self, record: KafkaRecord, limit: usize) -> Option<TopicPartition> {
        let partition = self
            .partitions
            .at(record.slot)
            .expect("an assigned partition's record");
        if partition.done_below.is_some_and(|done| record.offset() < done) {
            // Acknowledged under an earlier assignment (its commit is made at assign).
            return None;
        }
        partition.offsets.received(record.offset());
        partition.queued += 1;
        // Paused only when stalled. (The queue's own limit already bounds what waits;
        // pausing drops librdkafka's prefetch.)
        let pause = !partition.paused && partition.handed_out() >= limit;
        partition.paused |= pause;
        let full = pause.then(|| (record.topic_arc().clone(), record.partition()));
        self.queue.push_back(Message::new(record));
        full
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
}

impl Shared {
    pub(crate) fn new(max_buffered_per_partition: usize) -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::default(),
            acknowledged: Condvar::new(),
            ready: Notify::new(),
            room: Condvar::new(),
            max_buffered_per_partition,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The refused revoke commits (see [`State::unconfirmed`]) of partitions in `tpl`.
    pub(crate) fn pending(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        let state = self.lock();
        let mut pending = TopicPartitionList::new();
        for element in tpl.elements() {
            let key = key_of(&element);
            if let Some(&offset) = state.unconfirmed.get(&key) {
                pending
                    .add_partition_offset(&key.0, key.1, Offset::Offset(offset))
                    .expect("a valid offset");
            }
        }
        pending
    }

    /// The partitions of `tpl` that are not paused for having their limit handed out.
    pub(crate) fn not_paused(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        let state = self.lock();
        let mut running = TopicPartitionList::new();
        for element in tpl.elements() {
            let key = key_of(&element);
            if !state.partitions.get(&key).is_some_and(|p| p.paused) {
                running.add_partition(&key.0, key.1);
            }
        }
        running
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
            let partition = Partition {
                generation,
                offsets: PartitionOffsets::default(),
                queued: 0,
                paused: false,
                committed: None,
                done_below,
            };
            state.partitions.insert(key, partition);
        }
        retry
    }

    /// Takes up to `demand` queued records, in order, skipping those of a partition that
    /// already has `max_buffered_per_partition` handed out: a partition stalled behind a
    /// retry cannot take the whole pipeline's demand.
    pub(crate) fn take(&self, demand: usize) -> Vec<Message<KafkaRecord>> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let limit = self.max_buffered_per_partition;
        let mut taken = Vec::with_capacity(demand.min(state.queue.len()));
        let mut kept = VecDeque::new();
        while taken.len() < demand {
            let Some(message) = state.queue.pop_front() else {
                break;
            };
            match state.partitions.at(message.data().slot) {
                Some(partition) if partition.handed_out() >= limit => {
                    kept.push_back(message);
                }
                Some(partition) => {
                    partition.queued -= 1;
                    taken.push(message);
                }
                None => {}
            }
        }
        // Skipped records go back in front, in their order.
        while let Some(message) = kept.pop_back() {
            state.queue.push_front(message);
        }
        if !taken.is_empty() {
            self.room.notify_one();
            if !state.queue.is_empty() {
                self.ready.notify_one();
            }
        }
        taken
    }

    /// Waits, at most `timeout`, until the queue holds fewer than `limit` records that
    /// can be taken; `false` if it is still full (or the source stopped or finished).
    pub(crate) fn wait_for_room(&self, limit: usize, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .room
            .wait_timeout_while(state, timeout, |s| {
                self.takeable(s) >= limit && !s.stopped && !s.finished
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.takeable(&state) < limit
    }

    /// Queued records that the pipeline may take: not those of a partition with its limit
    /// handed out (paused, so its queued records stay few), which would otherwise fill
    /// the queue and starve every other partition.
    pub(crate) fn takeable(&self, state: &State) -> usize {
        let limit = self.max_buffered_per_partition;
        let blocked: usize = state
            .partitions
            .values()
            .filter(|p| p.handed_out() >= limit)
            .map(|p| p.queued)
            .sum();
        state.queue.len() - blocked
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
            if let (Some(partition), Offset::Offset(offset)) =
                (state.partitions.get_mut(&key), element.offset())
            {
                partition.committed = partition.committed.max(Some(offset));
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
        let slots: Vec<_> = revoked
            .iter()
            .filter_map(|tp| state.partitions.slot(tp))
            .collect();
        state.queue.retain(|m| !slots.contains(&m.data().slot));
        let deadline = Instant::now() + timeout;
        let busy = |state: &State| {
            revoked
                .iter()
                .any(|tp| state.partitions.get(tp).is_some_and(|p| p.handed_out() > 0))
        };
        while busy(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    ?timeout,
                    "revoked partitions still had messages in flight; committing what was acknowledged"
                );
                break;
            }
            state = self
                .acknowledged
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        let mut commits = TopicPartitionList::new();
        for tp in &revoked {
            if let Some(partition) = state.partitions.remove(tp) {
                add_commit(&mut commits, tp, &partition, true);
            }
        }
        state.to_resume.retain(|tp| !revoked.contains(tp));
        commits
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
    pub(crate) fn acknowledge<'a>(&self, records: impl Iterator<Item = &'a KafkaRecord>) {
        let mut state = self.lock();
        let limit = self.max_buffered_per_partition;
        let mut resume = Vec::new();
        for record in records {
            let Some(partition) = state.partitions.at(record.slot) else {
                continue;
            };
            partition.offsets.acknowledged(record.offset());
            if partition.paused && partition.offsets.in_flight() <= limit / 2 {
                partition.paused = false;
                resume.push((record.topic_arc().clone(), record.partition()));
            }
        }
        state.to_resume.extend(resume);
        drop(state);
        self.acknowledged.notify_all();
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

    use proptest::prelude::*;

    use super::*;

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
        let mut state = shared.lock();
        let mut record = KafkaRecord::new(TOPIC, partition, offset);
        record.slot = state
            .partitions
            .slot(&(Arc::from(TOPIC), partition))
            .expect("assigned");
        state.queue_record(record, shared.max_buffered_per_partition);
    }

    #[test]
    fn an_acknowledgement_after_the_revoke_commits_nothing() {
        let shared = Shared::new(100);
        shared.assign(&list(&[0]), None);
        (0..3).for_each(|offset| receive(&shared, 0, offset));
        let taken = shared.take(3);
        shared.acknowledge(taken[..1].iter().map(Message::data));
        // 1 and 2 are still in flight: the revoke commits 1 and forgets the partition.
        assert_eq!(
            offsets(&shared.revoke(&list(&[0]), Duration::ZERO)),
            BTreeMap::from([(0, 1)])
        );
        // It comes back: the earlier assignment's late acknowledgements count for nothing.
        shared.assign(&list(&[0]), None);
        shared.acknowledge(taken[1..].iter().map(Message::data));
        assert!(offsets(&shared.commits(true)).is_empty());
        // Read again from the committed offset, and acknowledged under this assignment.
        receive(&shared, 0, 1);
        let again = shared.take(1);
        shared.acknowledge(again.iter().map(Message::data));
        assert_eq!(offsets(&shared.commits(false)), BTreeMap::from([(0, 2)]));
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
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3i32).prop_map(Op::Receive),
            2 => (1..5usize).prop_map(Op::Take),
            4 => any::<usize>().prop_map(Op::Ack),
            1 => (0..3i32).prop_map(Op::Revoke),
            1 => (0..3i32).prop_map(Op::Assign),
        ]
    }

    proptest! {
        /// Random receipts, takes, acknowledgements in any order and rebalances: no commit
        /// passes a record not acknowledged under the partition's current assignment, and
        /// none moves backwards; once everything is acknowledged, each partition commits up
        /// to its last record.
        #[test]
        fn commits_never_pass_an_unfinished_record(ops in proptest::collection::vec(op(), 1..200)) {
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
            let mut held: Vec<Message<KafkaRecord>> = Vec::new();
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
                        let record = message.data();
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
                }
                check(&mut group, &shared.commits(false), &received, &acked);
            }
            // Everything still held is finished: each assigned partition reaches its end.
            held.extend(shared.take(usize::MAX));
            for message in &held {
                if shared.lock().partitions.at(message.data().slot).is_some() {
                    let record = message.data();
                    acked.get_mut(&record.partition()).unwrap().insert(record.offset());
                }
            }
            shared.acknowledge(held.iter().map(Message::data));
            let last = shared.commits(true);
            check(&mut group, &last, &received, &acked);
            for p in &assigned {
                if let Some(&end) = received[p].last() {
                    prop_assert_eq!(offsets(&last).get(p).copied(), Some(end + 1));
                }
            }
        }
    }
}
