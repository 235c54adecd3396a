//! A processor: runs `prepare_messages` and `handle_message` on each chunk, then hands
//! each message to its batcher or, with no batcher, acknowledges it.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::handler::Handler;
use crate::message::{Failure, FailureKind, Message};
use crate::source::Acknowledger;
use crate::topology::acknowledge::split_failed;
use crate::topology::guard::guarded;
use crate::topology::Context;

/// Where a processor sends the messages routed to one batcher.
pub(crate) struct BatcherRoute<T> {
    pub(crate) name: Arc<str>,
    pub(crate) tx: mpsc::Sender<Vec<Message<T>>>,
}

impl<T> Clone for BatcherRoute<T> {
    fn clone(&self) -> Self {
        BatcherRoute {
            name: self.name.clone(),
            tx: self.tx.clone(),
        }
    }
}

pub(crate) struct Processor<H: Handler, A> {
    pub(crate) ctx: Arc<Context<H, A>>,
    pub(crate) input: async_channel::Receiver<Vec<Message<H::Item>>>,
    pub(crate) batchers: Vec<BatcherRoute<H::Item>>,
}

impl<H, A> Processor<H, A>
where
    H: Handler,
    A: Acknowledger<H::Item>,
{
    pub(crate) async fn run(self) {
        while let Ok(chunk) = self.input.recv().await {
            let chunk = self.handle(chunk).await;
            self.route(chunk).await;
        }
    }

    async fn handle(&self, mut chunk: Vec<Message<H::Item>>) -> Vec<Message<H::Item>> {
        let handler = &self.ctx.handler;
        if let Err(failure) = guarded(handler.prepare_messages(&mut chunk)).await {
            chunk
                .iter_mut()
                .for_each(|message| message.set_failure(failure.clone()));
            return chunk;
        }
        for message in chunk.iter_mut() {
            if let Err(failure) = guarded(handler.handle_message(message)).await {
                message.set_failure(failure);
            }
        }
        chunk
    }

    /// The index of the batcher a successful message goes to: the one it names, else the first.
    fn batcher_of(&self, message: &Message<H::Item>) -> Option<usize> {
        match message.batcher() {
            None => Some(0),
            Some(name) => self.batchers.iter().position(|route| &*route.name == name),
        }
    }

    async fn route(&self, chunk: Vec<Message<H::Item>>) {
        if self.batchers.is_empty() {
            let (successful, failed) = split_failed(chunk);
            return self.ctx.acknowledge(successful, failed).await;
        }
        // The common case moves the whole chunk on without copying it.
        let first = chunk.first().and_then(|message| self.batcher_of(message));
        if let Some(only) = first {
            if chunk
                .iter()
                .all(|m| m.is_ok() && self.batcher_of(m) == Some(only))
            {
                return self.forward(only, chunk).await;
            }
        }
        let mut routed: Vec<Vec<Message<H::Item>>> = self.batchers.iter().map(|_| Vec::new()).collect();
        let mut failed = Vec::new();
        for mut message in chunk {
            if message.is_failed() {
                failed.push(message);
            } else if let Some(index) = self.batcher_of(&message) {
                routed[index].push(message);
            } else {
                let error = format!("no batcher named `{}`", message.batcher().unwrap_or_default());
                message.set_failure(Failure::new(FailureKind::Routing, error.into()));
                failed.push(message);
            }
        }
        self.ctx.acknowledge(Vec::new(), failed).await;
        for (index, messages) in routed.into_iter().enumerate() {
            if !messages.is_empty() {
                self.forward(index, messages).await;
            }
        }
    }

    async fn forward(&self, index: usize, messages: Vec<Message<H::Item>>) {
        let route = &self.batchers[index];
        if let Err(lost) = route.tx.send(messages).await {
            // Only after an abort at the shutdown deadline: left unacknowledged, redelivered.
            tracing::warn!(batcher = %route.name, messages = lost.0.len(), "batcher gone; messages left unacknowledged");
        }
    }
}
