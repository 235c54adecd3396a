//! What the NATS tests share: a server of their own, streams made and messages
//! published and counted through a plain client.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

#[path = "../../../../test-support/nats.rs"]
mod nats_server;

pub use nats_server::Nats;

use std::time::Duration;

use longshore_nats::async_nats::jetstream::consumer::{pull, AckPolicy};
use longshore_nats::async_nats::jetstream::{self, stream};

pub async fn context(url: &str) -> jetstream::Context {
    jetstream::new(longshore_nats::async_nats::connect(url).await.unwrap())
}

/// Makes stream `name` over the subjects `name.>`, on file storage.
pub async fn make_stream(context: &jetstream::Context, name: &str) {
    context
        .get_or_create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{name}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Publishes `payloads` on `<stream>.in`, in order, each confirmed by the server.
pub async fn publish(context: &jetstream::Context, stream: &str, payloads: impl IntoIterator<Item = String>) {
    let mut confirmations = Vec::new();
    for payload in payloads {
        confirmations.push(
            context
                .publish(format!("{stream}.in"), payload.into())
                .await
                .unwrap(),
        );
        if confirmations.len() == 1000 {
            for confirmation in confirmations.drain(..) {
                confirmation.await.unwrap();
            }
        }
    }
    for confirmation in confirmations {
        confirmation.await.unwrap();
    }
}

/// Messages of `stream` that `consumer` has not finished: not yet delivered, or
/// delivered and not acknowledged. `u64::MAX` while the consumer does not exist.
pub async fn unfinished(context: &jetstream::Context, stream: &str, consumer: &str) -> u64 {
    let Ok(stream) = context.get_stream(stream).await else {
        return u64::MAX;
    };
    match stream.consumer_info(consumer).await {
        Ok(info) => info.num_pending + info.num_ack_pending as u64,
        Err(_) => u64::MAX,
    }
}

/// Makes (or, with the same name, updates) the durable consumer `c` of `stream` before a
/// source does, with explicit acks, an `ack_wait` of 5 s and `settings`' other fields.
pub async fn make_consumer(context: &jetstream::Context, stream: &str, settings: pull::Config) {
    context
        .get_stream(stream)
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("c".to_owned()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(5),
            ..settings
        })
        .await
        .unwrap();
}
