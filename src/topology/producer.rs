//! A producer: takes credits, asks its source for exactly that many messages, and
//! dispatches them to the processors.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::message::{Failure, FailureKind, Message};
use crate::metrics::Held;
use crate::source::Source;
use crate::topology::guard::panic_message;
use crate::topology::Meter;

pub(crate) use crate::source::PartitionBy;

/// How received messages reach the processors.
pub(crate) enum Dispatch<T> {
    /// One queue all processors take from: whichever is free handles the next chunk.
    Shared(async_channel::Sender<Vec<Message<T>>>),
    /// One queue per processor, chosen by the message's partition key, so that messages
    /// of one key are handled in order by one processor.
    Partitioned {
        queues: Vec<async_channel::Sender<Vec<Message<T>>>>,
        partition_by: PartitionBy<T>,
    },
}

impl<T> Clone for Dispatch<T> {
    fn clone(&self) -> Self {
        match self {
            Dispatch::Shared(queue) => Dispatch::Shared(queue.clone()),
            Dispatch::Partitioned { queues, partition_by } => Dispatch::Partitioned {
                queues: queues.clone(),
                partition_by: partition_by.clone(),
            },
        }
    }
}

pub(crate) struct Producer<S: Source> {
    pub(crate) source: Arc<S>,
    pub(crate) meter: Arc<Meter>,
    pub(crate) dispatch: Dispatch<S::Item>,
    /// Fetch once at least this many credits are free (`max_demand - min_demand`).
    pub(crate) min_fetch: usize,
    /// Ask for at most this many at once.
    pub(crate) max_fetch: usize,
    /// The largest chunk a processor is given (`max_demand`).
    pub(crate) max_chunk: usize,
    pub(crate) stop: CancellationToken,
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl<S: Source> Producer<S> {
    pub(crate) async fn run(self) {
        let credits = &self.meter.credits;
        let mut retry = RETRY_MIN;
        loop {
            let mut demand = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                demand = credits.take(self.min_fetch, self.max_fetch) => demand,
            };
            // The rate limit comes before the fetch: a throttled pipeline waits with
            // nothing fetched, holding only its credits.
            let limit = &self.meter.rate_limit;
            if let Some(burst) = limit.burst().filter(|&burst| burst < demand) {
                credits.give_back(demand - burst);
                demand = burst;
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    credits.give_back(demand);
                    return;
                }
                waited = limit.acquire(demand) => self.meter.add_rate_limited(waited, &self.meter.metrics.rate_limited),
            }
            let demanded = Held::new(&self.meter.metrics.producer_demand, demand);
            let received = tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    credits.give_back(demand);
                    return;
                }
                received = self.source.receive(NonZeroUsize::new(demand).expect("credits take at least one")) => received,
            };
            drop(demanded);
            match received {
                Ok(Some(messages)) => {
                    retry = RETRY_MIN;
                    let got = messages.len();
                    if got > demand {
                        // A source broke its contract; take the excess so the count stays true.
                        tracing::error!(demand, got, "source returned more messages than demanded");
                        credits.take(got - demand, got - demand).await;
                    }
                    credits.give_back(demand.saturating_sub(got));
                    self.meter.add_received(got);
                    if self.dispatch(messages).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    credits.give_back(demand);
                    return;
                }
                Err(error) => {
                    credits.give_back(demand);
                    tracing::warn!(%error, retry_in = ?retry, "source failed to receive");
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Sends messages to the processors; `Err` only when they are gone (aborted).
    async fn dispatch(&self, mut messages: Vec<Message<S::Item>>) -> Result<(), ()> {
        let now = Instant::now().into_std();
        messages
            .iter_mut()
            .for_each(|message| message.set_received_at(now));
        match &self.dispatch {
            Dispatch::Shared(queue) => {
                for (_, chunk) in chunks(messages, 1, self.max_chunk, |_| 0) {
                    queue.send(chunk).await.map_err(drop)?;
                }
            }
            Dispatch::Partitioned { queues, partition_by } => {
                messages
                    .iter_mut()
                    .for_each(|message| set_order_key(message, partition_by));
                let n = queues.len() as u64;
                for (queue, chunk) in chunks(messages, queues.len(), self.max_chunk, |m| {
                    (m.order_key().unwrap_or_default() % n) as usize
                }) {
                    queues[queue].send(chunk).await.map_err(drop)?;
                }
            }
        }
        Ok(())
    }
}

/// Computes the message's ordering key, once: the stages read it from the message. A
/// `partition_by` that panics fails the message (a routing failure, never retried: the
/// key would panic again) instead of ending the producer.
fn set_order_key<T>(message: &mut Message<T>, partition_by: &PartitionBy<T>) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| partition_by(message))) {
        Ok(key) => message.set_order_key(key),
        Err(payload) => {
            let error = format!("partition_by panicked: {}", panic_message(payload));
            tracing::error!(%error, "a message's ordering key could not be computed; failing it");
            message.set_failure(Failure::new(FailureKind::Routing, error.into()));
            message.set_order_key(0);
        }
    }
}

/// Splits `messages` into chunks of at most `max` messages, each for one of `parts`
/// queues (`part_of` says which), in order within each queue. Each message is moved
/// once, into a chunk allocated at its final size; a vector that fits one queue's chunk
/// whole is passed on as it is.
fn chunks<T>(
    messages: Vec<T>,
    parts: usize,
    max: usize,
    part_of: impl Fn(&T) -> usize,
) -> Vec<(usize, Vec<T>)> {
    // One call of `part_of` per message: with key order, it hashes the key.
    let of: Vec<usize> = messages.iter().map(part_of).collect();
    let Some(&first) = of.first() else {
        return Vec::new();
    };
    if messages.len() <= max && of.iter().all(|&part| part == first) {
        return vec![(first, messages)];
    }
    let mut left = vec![0usize; parts];
    of.iter().for_each(|&part| left[part] += 1);
    let mut open: Vec<Vec<T>> = left.iter().map(|&n| Vec::with_capacity(n.min(max))).collect();
    let mut out = Vec::new();
    for (message, part) in messages.into_iter().zip(of) {
        open[part].push(message);
        left[part] -= 1;
        if open[part].len() == max || left[part] == 0 {
            let next = Vec::with_capacity(left[part].min(max));
            out.push((part, std::mem::replace(&mut open[part], next)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn chunks_keep_order_and_size() {
        let whole = |_: &u8| 0;
        assert!(chunks(Vec::<u8>::new(), 1, 3, whole).is_empty());
        assert_eq!(chunks(vec![1, 2], 1, 3, whole), vec![(0, vec![1, 2])]);
        assert_eq!(
            chunks(vec![1, 2, 3, 4, 5, 6, 7], 1, 3, whole),
            vec![(0, vec![1, 2, 3]), (0, vec![4, 5, 6]), (0, vec![7])]
        );
    }

    #[test]
    fn chunks_ask_each_messages_queue_once() {
        let calls = std::cell::Cell::new(0);
        let counted = |m: &u8| {
            calls.set(calls.get() + 1);
            usize::from(*m % 2)
        };
        chunks((0..50).collect(), 2, 8, counted);
        assert_eq!(calls.get(), 50);
    }

    #[test]
    fn chunks_keep_each_queues_order_and_fill_no_chunk_past_max() {
        let odd = |m: &u8| usize::from(m % 2 == 1);
        assert_eq!(
            chunks(vec![1, 2, 3, 4, 5, 6, 7, 8, 9], 2, 2, odd),
            vec![
                (1, vec![1, 3]),
                (0, vec![2, 4]),
                (1, vec![5, 7]),
                (0, vec![6, 8]),
                (1, vec![9])
            ]
        );
        assert_eq!(chunks(vec![1, 3, 5], 2, 4, odd), vec![(1, vec![1, 3, 5])]);
        let every = chunks((0..100).collect(), 3, 7, |m: &u8| usize::from(*m % 3));
        for part in 0..3 {
            let got: Vec<u8> = every
                .iter()
                .filter(|(p, _)| *p == part)
                .flat_map(|(_, c)| c.clone())
                .collect();
            assert_eq!(
                got,
                (0..100)
                    .filter(|m| usize::from(m % 3) == part)
                    .collect::<Vec<u8>>()
            );
        }
        assert!(every
            .iter()
            .all(|(_, chunk)| !chunk.is_empty() && chunk.len() <= 7));
    }
}
