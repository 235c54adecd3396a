//! Test support: a real SQS-compatible server (LocalStack, a separate process on a
//! loopback port, one per test binary), queues, sending known messages, counting what is
//! left. Every client gets dummy credentials and `AWS_EC2_METADATA_DISABLED=true`, so
//! nothing leaves loopback.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

pub mod localstack;
#[path = "../../../../test-support/registry.rs"]
mod registry;
#[path = "../../../../test-support/wait.rs"]
mod wait;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
pub use localstack::localstack;
use longshore_sqs::SqsConfig;
#[allow(unused_imports)] // each test binary uses its own part
pub use registry::metric;
#[allow(unused_imports)]
pub use wait::{eventually, eventually_eq, Watchdog};

/// The longest one SQS test may run.
pub const TEST_LIMIT: Duration = Duration::from_secs(240);

/// A client for the test's own calls.
pub async fn client() -> Client {
    localstack();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    Client::new(&config)
}

/// A source config for `queue` on the test server.
pub fn config(queue: &str) -> SqsConfig {
    SqsConfig::new(queue)
        .endpoint_url(&localstack().endpoint)
        .wait_time(Duration::from_secs(1))
        .lag_interval(Duration::from_millis(200))
}

/// A queue name unique to this run.
pub fn unique(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}-{}-{n}", std::process::id())
}

/// Creates a queue with `attributes`; returns its URL.
pub async fn create_queue(client: &Client, name: &str, attributes: &[(QueueAttributeName, &str)]) -> String {
    let mut call = client.create_queue().queue_name(name);
    for (attribute, value) in attributes {
        call = call.attributes(attribute.clone(), *value);
    }
    call.send().await.expect("create queue").queue_url.unwrap()
}

/// A queue with a dead-letter queue after `max_receives`; returns (queue, dlq) URLs.
pub async fn create_with_dlq(client: &Client, name: &str, max_receives: u32, fifo: bool) -> (String, String) {
    let suffix = if fifo { ".fifo" } else { "" };
    let mut attributes = vec![];
    if fifo {
        attributes.push((QueueAttributeName::FifoQueue, "true"));
    }
    let dlq = create_queue(client, &format!("{name}-dlq{suffix}"), &attributes).await;
    let dlq_arn = attribute(client, &dlq, QueueAttributeName::QueueArn).await;
    let redrive = format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receives}"}}"#);
    attributes.push((QueueAttributeName::RedrivePolicy, &redrive));
    let queue = create_queue(client, &format!("{name}{suffix}"), &attributes).await;
    (queue, dlq)
}

pub async fn attribute(client: &Client, url: &str, name: QueueAttributeName) -> String {
    let answer = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .expect("get attributes");
    answer
        .attributes
        .unwrap_or_default()
        .remove(&name)
        .unwrap_or_default()
}

/// Messages visible plus in flight (not visible) in the queue.
pub async fn depth(client: &Client, url: &str) -> (u64, u64) {
    let answer = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("get attributes");
    let attributes = answer.attributes.unwrap_or_default();
    let count = |name| {
        attributes
            .get(&name)
            .and_then(|n: &String| n.parse().ok())
            .unwrap_or(0)
    };
    (
        count(QueueAttributeName::ApproximateNumberOfMessages),
        count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Waits (10 s at most) for the server's approximate counts to reach `expected`
/// (visible, in flight): they settle a moment after the calls that change them.
pub async fn assert_depth(client: &Client, url: &str, expected: (u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = depth(client, url).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue depth {now:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `bodies` in batches of 10, 8 batches at a time; with `group` (a FIFO queue),
/// each body's group, one batch at a time so that the queue's order is `bodies`' order.
pub async fn send(
    client: &Client,
    url: &str,
    bodies: impl IntoIterator<Item = String>,
    group: Option<&(dyn Fn(&str) -> String + Sync)>,
) {
    let bodies: Vec<String> = bodies.into_iter().collect();
    let wave = if group.is_some() { 10 } else { 80 };
    for wave in bodies.chunks(wave) {
        let calls = wave.chunks(10).map(|batch| {
            let entries = batch.iter().enumerate().map(|(i, body)| {
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body);
                if let Some(group) = group {
                    entry = entry.message_group_id(group(body)).message_deduplication_id(body);
                }
                entry.build().unwrap()
            });
            client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries.collect()))
                .send()
        });
        for sent in futures_util::future::join_all(calls).await {
            let sent = sent.expect("send batch");
            assert!(sent.failed.is_empty(), "send refused: {:?}", sent.failed);
        }
    }
}

/// Receives (and deletes) messages of `url` until `expected` came, or `timeout` passed.
pub async fn drain(
    client: &Client,
    url: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut all = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        if all.len() >= expected && expected > 0 {
            return all;
        }
        let answer = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .message_attribute_names("All")
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive");
        let messages = answer.messages.unwrap_or_default();
        if messages.is_empty() {
            if Instant::now() >= deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        for message in &messages {
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .expect("delete");
        }
        all.extend(messages);
    }
}

/// Counts of each body handled.
pub fn counts(bodies: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for body in bodies {
        *counts.entry(body).or_insert(0) += 1;
    }
    counts
}
