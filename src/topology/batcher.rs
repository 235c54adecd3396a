//! A batcher: groups a named batcher's messages by batch key and sends a batch when it
//! is full, when its oldest message has waited the batch timeout, or at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::handler::{BatchInfo, BatchTrigger};
use crate::message::{BatchKey, Message};

pub(crate) type Batch<T> = (Vec<Message<T>>, BatchInfo);

pub(crate) struct BatcherStage<T> {
    pub(crate) name: Arc<str>,
    pub(crate) batch_size: usize,
    pub(crate) batch_timeout: Duration,
    pub(crate) input: mpsc::Receiver<Vec<Message<T>>>,
    pub(crate) output: async_channel::Sender<Batch<T>>,
}

struct Pending<T> {
    messages: Vec<Message<T>>,
    deadline: Instant,
}

impl<T: Send + 'static> BatcherStage<T> {
    pub(crate) async fn run(mut self) {
        let mut pending: HashMap<BatchKey, Pending<T>> = HashMap::new();
        let timer = sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            let next = pending.values().map(|p| p.deadline).min();
            if next != armed {
                if let Some(deadline) = next {
                    timer.as_mut().reset(deadline);
                }
                armed = next;
            }
            // Timer first: under a steady flow a rare key's partial batch still times out.
            tokio::select! {
                biased;
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    let now = Instant::now();
                    let expired: Vec<BatchKey> = pending
                        .iter()
                        .filter(|(_, p)| p.deadline <= now)
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in expired {
                        let batch = pending.remove(&key).expect("expired key is pending");
                        self.send(key, batch.messages, BatchTrigger::Timeout).await;
                    }
                }
                chunk = self.input.recv() => match chunk {
                    Some(chunk) => self.add(&mut pending, chunk).await,
                    None => break,
                },
            }
        }
        for (key, batch) in pending {
            self.send(key, batch.messages, BatchTrigger::Flush).await;
        }
    }

    async fn add(&self, pending: &mut HashMap<BatchKey, Pending<T>>, chunk: Vec<Message<T>>) {
        for message in chunk {
            if !pending.contains_key(message.batch_key()) {
                let batch = Pending {
                    messages: Vec::with_capacity(self.batch_size),
                    deadline: Instant::now() + self.batch_timeout,
                };
                pending.insert(message.batch_key().clone(), batch);
            }
            let batch = pending.get_mut(message.batch_key()).expect("inserted above");
            batch.messages.push(message);
            if batch.messages.len() >= self.batch_size {
                let key = batch.messages[0].batch_key().clone();
                let full = pending.remove(&key).expect("full key is pending");
                self.send(key, full.messages, BatchTrigger::Size).await;
            }
        }
    }

    async fn send(&self, batch_key: BatchKey, messages: Vec<Message<T>>, trigger: BatchTrigger) {
        let info = BatchInfo {
            batcher: self.name.clone(),
            batch_key,
            trigger,
        };
        if let Err(lost) = self.output.send((messages, info)).await {
            // Only after an abort at the shutdown deadline: left unacknowledged, redelivered.
            tracing::warn!(batcher = %self.name, messages = lost.0 .0.len(), "batch processors gone; batch left unacknowledged");
        }
    }
}
