//! The running stages behind a [`Pipeline`](crate::Pipeline). Private: users see the
//! builder and the handle, never the tasks.
//!
//! ```text
//!  producers ──chunks──▶ processors ──chunks──▶ batcher ──batches──▶ batch processors
//!     │  (take credits)       │ (no batcher: ack)                      │ (ack)
//!     └──────────── credits come back when a message is acknowledged ◀─┘
//! ```
//!
//! Every channel is bounded, and a producer only asks its source for as many messages
//! as it holds credits for, so the in-flight total never exceeds the credit limit.

mod acknowledge;
mod batch_groups;
mod batch_processor;
mod batcher;
pub(crate) mod credits;
mod guard;
mod processor;
mod producer;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::handler::Handler;
use crate::source::Acknowledger;

pub(crate) use batch_processor::BatchProcessor;
pub(crate) use batcher::BatcherStage;
pub(crate) use processor::{BatcherRoute, Processor};
pub(crate) use producer::{Dispatch, PartitionBy, Producer};

use credits::Credits;

/// What every stage shares: the user's handler, the source's acknowledger, the meter.
pub(crate) struct Context<H, A> {
    pub(crate) handler: H,
    pub(crate) acknowledger: A,
    pub(crate) meter: Arc<Meter>,
}

impl<H, A> Context<H, A>
where
    H: Handler,
    A: Acknowledger<H::Item>,
{
    pub(crate) fn new(handler: H, acknowledger: A, meter: Arc<Meter>) -> Arc<Self> {
        Arc::new(Context {
            handler,
            acknowledger,
            meter,
        })
    }
}

/// The pipeline's counts, updated once per chunk or batch, never per message.
#[derive(Debug)]
pub(crate) struct Meter {
    pub(crate) credits: Credits,
    pub(crate) received: AtomicU64,
    pub(crate) successful: AtomicU64,
    pub(crate) failed: AtomicU64,
}

impl Meter {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Meter {
            credits: Credits::new(limit),
            received: AtomicU64::new(0),
            successful: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }
}
