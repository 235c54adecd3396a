//! A producer: takes credits, asks its source for exactly that many messages, and
//! dispatches them to the processors.

use std::num::NonZeroUsize;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::control::pause::Paused;
use crate::message::{Failure, FailureKind, Message};
use crate::metrics::Held;
use crate::receipt::Receipt;
use crate::source::Source;
use crate::topology::guard::panic_message;
use crate::topology::key_queue::KeySender;
use crate::topology::{ready_now, until_cancelled, Meter};

pub(crate) use crate::source::PartitionBy;

/// How received messages reach the processors.
pub(crate) enum Dispatch<T, M> {
    /// One queue all processors take from: whichever is free handles the next chunk.
    Shared(async_channel::Sender<Vec<Message<T, M>>>),
    /// Queued per key (the message's partition key), each key's messages handled in
    /// order by whichever processor takes it.
    Partitioned {
        queue: KeySender<T, M>,
        partition_by: PartitionBy<T, M>,
    },
}

impl<T, M> Clone for Dispatch<T, M> {
    fn clone(&self) -> Self {
        match self {
            Dispatch::Shared(queue) => Dispatch::Shared(queue.clone()),
            Dispatch::Partitioned { queue, partition_by } => Dispatch::Partitioned {
                queue: queue.clone(),
                partition_by: partition_by.clone(),
            },
        }
    }
}

pub(crate) struct Producer<S: Source> {
    pub(crate) source: Arc<S>,
    pub(crate) meter: Arc<Meter>,
    pub(crate) dispatch: Dispatch<S::Data, S::Metadata>,
    /// Fetch once at least this many credits are free (`max_demand - min_demand`).
    pub(crate) min_fetch: usize,
    /// Ask for at most this many at once.
    pub(crate) max_fetch: usize,
    /// The largest chunk a processor is given (`max_demand`).
    pub(crate) max_chunk: usize,
    pub(crate) stop: CancellationToken,
    /// While paused, nothing is asked of the source.
    pub(crate) paused: Paused,
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl<S: Source> Producer<S> {
    pub(crate) async fn run(self) {
        let credits = &self.meter.credits;
        let mut retry = RETRY_MIN;
        let mut paused = self.paused.clone();
        let drops_fetch = self.source.drops_fetch_on_pause();
        let watching = self.paused.clone();
        // Each wait below first polls its own work once (`ready_now`), right after the
        // stop and pause were checked: work ready now costs no wait on the stop token or
        // the pause switch, not even one made and dropped, which a fetch of a quick
        // pipeline would otherwise pay three times. Work that has to wait goes into a
        // select with them. A stop or pause that came meanwhile is seen by the checks
        // between the waits.
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            if paused.is_paused() {
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => return,
                    () = paused.resumed() => {}
                }
            }
            let free = credits.try_take(self.min_fetch, self.max_fetch);
            let mut demand = match free {
                Some(demand) => demand,
                None => {
                    let taking = credits.take(self.min_fetch, self.max_fetch);
                    let Some(demand) = until_cancelled(&self.stop, taking).await else {
                        return;
                    };
                    // Stopped or paused while it waited for credits: they go back.
                    if self.stop.is_cancelled() || paused.is_paused() {
                        credits.give_back(demand);
                        continue;
                    }
                    demand
                }
            };
            // The rate limit comes before the fetch: a throttled pipeline waits with
            // nothing fetched, holding only its credits.
            let limit = &self.meter.rate_limit;
            if let Some(burst) = limit.burst().filter(|&burst| burst < demand) {
                credits.give_back(demand - burst);
                demand = burst;
            }
            let (waited, had_to_wait) = {
                let mut acquiring = pin!(limit.acquire(demand));
                match ready_now(acquiring.as_mut()).await {
                    Some(waited) => (waited, false),
                    None => (
                        tokio::select! {
                            biased;
                            waited = acquiring => waited,
                            () = self.stop.cancelled() => {
                                credits.give_back(demand);
                                return;
                            }
                            // Paused while it waits for the limit: nothing is fetched.
                            () = paused.paused() => {
                                credits.give_back(demand);
                                continue;
                            }
                        },
                        true,
                    ),
                }
            };
            self.meter
                .add_rate_limited(waited, &self.meter.metrics.rate_limited);
            // Stopped or paused while it waited for the limit. (With no wait since the
            // checks at the top, the task has not been suspended since them: checking
            // again would only narrow a race with the other threads, never close it.)
            if had_to_wait && (self.stop.is_cancelled() || paused.is_paused()) {
                credits.give_back(demand);
                continue;
            }
            let demanded = Held::new(&self.meter.metrics.producer_demand, demand);
            // Stopped, or paused while the source waits for messages (a caught-up
            // queue): the receive is dropped, so that nothing arriving meanwhile is
            // fetched; unless the source's fetch leases messages away from others. Once
            // woken, the receive is polled again only after both are checked.
            let pause_drops = |paused: &Paused| drops_fetch && paused.is_paused();
            let asked = NonZeroUsize::new(demand).expect("credits take at least one");
            let mut receiving = pin!(self.source.receive(asked));
            // Both were checked with no suspension since (at the top, or after a wait): what
            // the select's first turn would check.
            let received = match ready_now(receiving.as_mut()).await {
                Some(received) => received,
                None => tokio::select! {
                    biased;
                    () = already(|| self.stop.is_cancelled() || pause_drops(&watching)) => {
                        credits.give_back(demand);
                        continue;
                    }
                    received = receiving => received,
                    () = self.stop.cancelled() => {
                        credits.give_back(demand);
                        return;
                    }
                    () = paused.paused(), if drops_fetch => {
                        credits.give_back(demand);
                        continue;
                    }
                },
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
    async fn dispatch(&self, mut messages: Vec<Message<S::Data, S::Metadata>>) -> Result<(), ()> {
        let now = Receipt::at(Instant::now().into_std());
        messages.iter_mut().for_each(|message| message.set_receipt(now));
        match &self.dispatch {
            Dispatch::Shared(queue) => {
                for chunk in chunks(messages, self.max_chunk) {
                    queue.send(chunk).await.map_err(drop)?;
                }
            }
            Dispatch::Partitioned { queue, partition_by } => {
                messages
                    .iter_mut()
                    .for_each(|message| set_order_key(message, partition_by));
                queue.push(messages);
            }
        }
        Ok(())
    }
}

/// Ready at once if `now()` holds, else pending without asking to be woken: the first
/// branch of a select whose later branches wait for the same event.
fn already(now: impl Fn() -> bool) -> impl std::future::Future<Output = ()> {
    std::future::poll_fn(move |_| {
        if now() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
}

/// Computes the message's ordering key, once: the stages read it from the message. A
/// `partition_by` that panics fails the message (a routing failure, never retried: the
/// key would panic again) instead of ending the producer.
fn set_order_key<T, M>(message: &mut Message<T, M>, partition_by: &PartitionBy<T, M>) {
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

/// Splits `messages` into chunks of at most `max` messages, in order. A vector that
/// fits one chunk whole is passed on as it is, with nothing allocated to hold it.
fn chunks<X>(messages: Vec<X>, max: usize) -> impl Iterator<Item = Vec<X>> {
    let (whole, mut rest) = match messages.len() <= max {
        true => (Some(messages).filter(|m| !m.is_empty()), None),
        false => (None, Some(messages.into_iter())),
    };
    whole.into_iter().chain(std::iter::from_fn(move || {
        let chunk: Vec<X> = rest.as_mut()?.take(max).collect();
        (!chunk.is_empty()).then_some(chunk)
    }))
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn chunks_keep_order_and_size() {
        let split = |messages: Vec<u8>| chunks(messages, 3).collect::<Vec<_>>();
        assert!(split(Vec::new()).is_empty());
        assert_eq!(split(vec![1, 2]), vec![vec![1, 2]]);
        assert_eq!(split(vec![1, 2, 3]), vec![vec![1, 2, 3]]);
        assert_eq!(
            split(vec![1, 2, 3, 4, 5, 6, 7]),
            vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]
        );
    }
}
