//! What the RabbitMQ tests share: a server of their own, queues declared and messages
//! published and counted through a plain client.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

#[path = "../../../../test-support/rabbitmq.rs"]
mod rabbitmq_server;

pub use rabbitmq_server::RabbitMq;

use longshore_rabbitmq::lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use longshore_rabbitmq::lapin::types::FieldTable;
use longshore_rabbitmq::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// A channel of a plain client, with publisher confirms on.
pub async fn channel(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

/// Declares the durable queue `name`, with `arguments` (a dead-letter exchange, a type).
pub async fn declare(channel: &Channel, name: &str, arguments: FieldTable) {
    channel
        .queue_declare(name.into(), QueueDeclareOptions::durable(), arguments)
        .await
        .unwrap();
}

/// Publishes `payloads` to `queue` through the default exchange, persistent, in order,
/// each confirmed by the server.
pub async fn publish(channel: &Channel, queue: &str, payloads: impl IntoIterator<Item = String>) {
    let mut confirmations = Vec::new();
    for payload in payloads {
        confirmations.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    payload.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap(),
        );
        if confirmations.len() == 1000 {
            for confirmation in confirmations.drain(..) {
                assert!(confirmation.await.unwrap().is_ack(), "publish not confirmed");
            }
        }
    }
    for confirmation in confirmations {
        assert!(confirmation.await.unwrap().is_ack(), "publish not confirmed");
    }
}

/// The queue's ready messages and consumers, read with a passive declare on a channel
/// of its own.
pub async fn depth(connection: &Connection, queue: &str) -> (u32, u32) {
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "read".into()).await;
    (declared.message_count(), declared.consumer_count())
}
