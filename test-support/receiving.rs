//! A source's `receive` run as a task of its own, as one of the pipeline's producers
//! calls it: tests start several at once. Included by each connector's tests
//! (`#[path]`), not a crate.

#![allow(dead_code, unreachable_pub)]

use std::num::NonZeroUsize;
use std::sync::Arc;

use longshore::source::Source;
use longshore::Message;

/// Starts `source.receive(demand)`; its task gives what it received (a failure or an
/// exhausted source fails the test).
pub fn receive_in_task<S: Source + Sync>(
    source: &Arc<S>,
    demand: usize,
) -> tokio::task::JoinHandle<Vec<Message<S::Data, S::Metadata>>> {
    let source = source.clone();
    tokio::spawn(async move {
        let demand = NonZeroUsize::new(demand).expect("a demand of at least one");
        source
            .receive(demand)
            .await
            .expect("received")
            .expect("the source is not exhausted")
    })
}
