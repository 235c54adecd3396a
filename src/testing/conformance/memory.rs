//! The in-memory source as a broker, for its own conformance run.

use std::sync::Mutex;

use super::{lock, Broker, Declared, Published};
use crate::error::BoxError;
use crate::message::Message;
use crate::source::memory::MemorySource;

/// The in-memory source as a [`Broker`]: each consumer is a [`MemorySource`] over what
/// was published since the last one. It keeps nothing after a consumer stops (declared:
/// released messages are not delivered again) and has no server to ask, so it is settled
/// once every message published was handed to a consumer.
#[derive(Debug, Default)]
pub struct MemoryBroker {
    pending: Mutex<Vec<Published>>,
}

impl Broker for MemoryBroker {
    type Source = MemorySource<Published>;

    fn declared(&self) -> Declared {
        Declared::new().redelivers_released(false)
    }

    async fn publish(&self, messages: Vec<Published>) -> Result<(), BoxError> {
        lock(&self.pending).extend(messages);
        Ok(())
    }

    async fn source(&self) -> Result<MemorySource<Published>, BoxError> {
        let messages = std::mem::take(&mut *lock(&self.pending));
        Ok(MemorySource::from_iter(messages))
    }

    fn identify(&self, message: &Message<Published>) -> Published {
        *message.data()
    }

    async fn taken(&self, _source: &MemorySource<Published>) -> Result<usize, BoxError> {
        // Its iterator is read only as demand asks.
        Ok(0)
    }

    async fn settled(&self) -> Result<bool, BoxError> {
        Ok(lock(&self.pending).is_empty())
    }
}
