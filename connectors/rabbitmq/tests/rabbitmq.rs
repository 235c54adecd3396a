//! The RabbitMQ source against a real server: a message failed for good rejected to the
//! queue's dead-letter exchange; the server never having more out than the pipeline's
//! bound, and a larger prefetch refused; every connection closed by the server mid-run
//! (a broker-side disconnect) losing nothing and acknowledging nothing on the wrong
//! channel, and deliveries buffered from the closed channel not handed out; a slow
//! message never holding the prefetch with finished ones; a quorum
//! queue's delivery count told to the handler; the lag gauges exactly those
//! documented, and bad settings refused naming the field.

mod common;
#[path = "../../../test-support/documented.rs"]
mod documented;
#[path = "../../../tests/common/mod.rs"]
mod http;
#[path = "../../../test-support/prometheus.rs"]
mod prometheus;
#[path = "../../../test-support/refused.rs"]
mod refused;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{channel, declare, depth, publish, RabbitMq};
use longshore::source::{Acknowledger, Plan, Source};
use longshore::{BoxError, Handler, Permanent, Pipeline, Processors, RetryPolicy};
use longshore_rabbitmq::lapin::types::{AMQPValue, FieldTable};
use longshore_rabbitmq::{RabbitMqConfig, RabbitMqMessage, RabbitMqMetadata, RabbitMqSource};

/// Counts each payload handled; fails `bad` for good; sleeps `sleep` on each, and first
/// waits for `open` (when set) to be `true`.
#[derive(Default)]
struct Count {
    sleep: Duration,
    open: Option<tokio::sync::watch::Receiver<bool>>,
    handled: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Handler for Count {
    type Item = longshore_rabbitmq::Bytes;
    type Metadata = RabbitMqMetadata;

    async fn handle_message(&self, message: &mut RabbitMqMessage) -> Result<(), BoxError> {
        let payload = String::from_utf8(message.data().to_vec())?;
        if let Some(open) = &self.open {
            open.clone().wait_for(|&open| open).await?;
        }
        tokio::time::sleep(self.sleep).await;
        *self.handled.lock().unwrap().entry(payload.clone()).or_default() += 1;
        if payload == "bad" {
            return Err(Permanent::new("bad").into());
        }
        Ok(())
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tokio::task::block_in_place(&mut done) {
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dead_lettered_to(queue: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.into()),
    );
    arguments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_failure_goes_to_the_dead_letter_exchange_and_the_bound_holds() {
    let server = RabbitMq::start();
    let (connection, channel) = channel(&server.url()).await;
    declare(&channel, "jobs.dead", FieldTable::default()).await;
    declare(&channel, "jobs", dead_lettered_to("jobs.dead")).await;
    let mut payloads: Vec<String> = (0..400).map(|n| n.to_string()).collect();
    payloads.insert(200, "bad".to_owned());
    publish(&channel, "jobs", payloads).await;

    let (open, gate) = tokio::sync::watch::channel(false);
    let handler = Count {
        sleep: Duration::from_millis(5),
        open: Some(gate),
        ..Count::default()
    };
    let handled = handler.handled.clone();
    let source = RabbitMqSource::connect(RabbitMqConfig::new(server.url(), "jobs"))
        .await
        .unwrap();
    let pipeline = Pipeline::builder(source, handler)
        .processors(Processors::new(2).max_demand(5))
        .retry(RetryPolicy::new(2).initial_backoff(Duration::from_millis(20)))
        .start()
        .unwrap();
    let bound = pipeline.stats().get().max_in_flight as u64;
    // The server never has more out to the consumer than the pipeline can hold: with
    // the handler held, what is out rises to the bound and stays there; then everything
    // flows. (Unheld, the pipeline used to finish between two of the test's looks, which
    // then saw nothing out.)
    let mut most_out = 0;
    let mut look = || {
        let (ready, unacknowledged) = server.counts("jobs").unwrap();
        most_out = most_out.max(unacknowledged);
        (ready, unacknowledged)
    };
    until("the pipeline full", || look().1 >= bound).await;
    open.send_replace(true);
    until("every message done", || look() == (0, 0)).await;
    pipeline.shutdown().await.unwrap();
    assert_eq!(most_out, bound, "the most out, against the bound");
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 401);
    assert_eq!(
        handled["bad"], 1,
        "the bad one failed for good (permanent): not tried again"
    );
    assert!(handled.values().all(|&n| n <= 2));
    // Rejected without requeue: the dead-letter exchange routed it to jobs.dead.
    assert_eq!(depth(&connection, "jobs.dead").await, (1, 0));
    assert_no_channel_error(&server).await;

    // A prefetch above the pipeline's bound is refused at start.
    let source = RabbitMqSource::connect(RabbitMqConfig::new(server.url(), "jobs").prefetch(500))
        .await
        .unwrap();
    let refused = Pipeline::builder(source, Count::default())
        .processors(Processors::new(2).max_demand(5))
        .start()
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .starts_with("invalid source.prefetch: 500 is more than the pipeline's max_in_flight"),
        "{refused}"
    );
}

/// Sleeps 3 s on `slow`; counts every payload.
struct OneSlow {
    handled: Arc<Mutex<Vec<String>>>,
}

impl Handler for OneSlow {
    type Item = longshore_rabbitmq::Bytes;
    type Metadata = RabbitMqMetadata;

    async fn handle_message(&self, message: &mut RabbitMqMessage) -> Result<(), BoxError> {
        let payload = String::from_utf8(message.data().to_vec())?;
        if payload == "slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        self.handled.lock().unwrap().push(payload);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_message_never_holds_the_prefetch_with_finished_ones() {
    let server = RabbitMq::start();
    let (_connection, channel) = channel(&server.url()).await;
    declare(&channel, "small", FieldTable::default()).await;
    let mut payloads = vec!["slow".to_owned()];
    payloads.extend((0..200).map(|n| n.to_string()));
    publish(&channel, "small", payloads).await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    // A prefetch of 2: the slow message holds one; the other must keep coming, each
    // acknowledged although the slow one, before it, is not finished.
    let source = RabbitMqSource::connect(RabbitMqConfig::new(server.url(), "small").prefetch(2))
        .await
        .unwrap();
    let pipeline = Pipeline::builder(
        source,
        OneSlow {
            handled: handled.clone(),
        },
    )
    .processors(Processors::new(2).max_demand(1))
    .start()
    .unwrap();
    let started = Instant::now();
    until("the 200 fast ones handled while the slow one runs", || {
        handled.lock().unwrap().len() >= 200
    })
    .await;
    assert!(
        !handled.lock().unwrap().contains(&"slow".to_owned()),
        "the fast ones were handled only after the slow one ({:?})",
        started.elapsed()
    );
    until("every message done", || server.counts("small") == Some((0, 0))).await;
    pipeline.shutdown().await.unwrap();
    assert_no_channel_error(&server).await;
}

/// The lines of the server's log telling of a channel closed for an acknowledgement it
/// did not expect (`... caused a channel exception precondition_failed: unknown delivery
/// tag 7`).
fn channel_errors(server: &RabbitMq) -> Vec<String> {
    server
        .log()
        .lines()
        .filter(|line| line.to_ascii_lowercase().contains("precondition_failed"))
        .map(str::to_owned)
        .collect()
}

/// The server closed no channel for an acknowledgement it did not expect (a tag acked
/// twice, or on the wrong channel). Its log is read once it tells of one made on purpose
/// now (a tag never delivered, acknowledged): what came before is written by then, and
/// the check is shown to see such an error.
async fn assert_no_channel_error(server: &RabbitMq) {
    let (_connection, control) = channel(&server.url()).await;
    control.basic_ack(9_999, Default::default()).await.unwrap();
    until("the server's log tells the control's channel error", || {
        channel_errors(server).iter().any(|line| line.contains("9999"))
    })
    .await;
    let errors: Vec<String> = channel_errors(server)
        .into_iter()
        .filter(|line| !line.contains("9999"))
        .collect();
    assert!(
        errors.is_empty(),
        "the server closed a channel:\n{}",
        errors.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_under_the_consumer_fails_the_pipeline_after_a_minute() {
    let server = RabbitMq::start();
    let (_connection, channel) = channel(&server.url()).await;
    declare(&channel, "doomed", FieldTable::default()).await;
    publish(&channel, "doomed", ["1".to_owned()]).await;
    let handler = Count::default();
    let handled = handler.handled.clone();
    let source = RabbitMqSource::connect(RabbitMqConfig::new(server.url(), "doomed"))
        .await
        .unwrap();
    let pipeline = Pipeline::builder(source, handler).start().unwrap();
    until("the message handled", || handled.lock().unwrap().len() == 1).await;
    let deleted = Instant::now();
    channel
        .queue_delete("doomed".into(), Default::default())
        .await
        .unwrap();
    // The server cancels the consumer; each new one is refused (404). Not a passing
    // outage: after a minute the source reports it can no longer deliver.
    refused::ends_refused(pipeline, "rabbitmq", deleted).await;
}

/// The server closes every client connection, as an operator or a broker-side
/// disconnect would.
fn close_all_connections(server: &RabbitMq) {
    let closed = std::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
        .args(["-n", &server.node(), "close_all_connections", "test"])
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        closed.status.success(),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_buffered_from_a_closed_channel_are_not_handed_out() {
    let server = RabbitMq::start();
    let (_connection, channel) = channel(&server.url()).await;
    declare(&channel, "buffered", FieldTable::default()).await;
    publish(&channel, "buffered", (0..20).map(|n| n.to_string())).await;
    let source = RabbitMqSource::connect(RabbitMqConfig::new(server.url(), "buffered").prefetch(10))
        .await
        .unwrap();
    let demand = |n| NonZeroUsize::new(n).unwrap();
    assert_eq!(source.receive(demand(1)).await.unwrap().unwrap().len(), 1);
    // The server has pushed the whole prefetch: nine more wait in the client, unread.
    until("the prefetch delivered", || {
        server.counts("buffered") == Some((10, 10))
    })
    .await;
    close_all_connections(&server);
    until("the deliveries requeued", || {
        server.counts("buffered") == Some((20, 0))
    })
    .await;
    // From now on each message comes once: the nine buffered ones only as the server
    // delivers them again, not also from the dead channel's buffer.
    let acknowledger = source.acknowledger();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while seen.len() < 20 {
        let batch = tokio::time::timeout(Duration::from_secs(30), source.receive(demand(10)))
            .await
            .expect("the messages delivered again")
            .unwrap()
            .unwrap();
        for message in &batch {
            *seen
                .entry(String::from_utf8(message.data().to_vec()).unwrap())
                .or_default() += 1;
        }
        acknowledger.ack(batch, Vec::new()).await;
    }
    let twice: Vec<&String> = seen.iter().filter(|(_, n)| **n > 1).map(|(p, _)| p).collect();
    assert!(twice.is_empty(), "handed out twice after the close: {twice:?}");
    until("every message done", || server.counts("buffered") == Some((0, 0))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_server_mid_run_lose_nothing() {
    let server = RabbitMq::start();
    let (_connection, channel) = channel(&server.url()).await;
    declare(&channel, "cut", FieldTable::default()).await;
    let count = 3_000;
    publish(&channel, "cut", (0..count).map(|n| n.to_string())).await;
    let handler = Count {
        sleep: Duration::from_millis(1),
        ..Count::default()
    };
    let handled = handler.handled.clone();
    let source = RabbitMqSource::connect(RabbitMqConfig::new(server.url(), "cut"))
        .await
        .unwrap();
    let pipeline = Pipeline::builder(source, handler)
        .processors(Processors::new(4).max_demand(10))
        .start()
        .unwrap();
    let bound = pipeline.stats().get().max_in_flight;
    let total = || handled.lock().unwrap().values().sum::<usize>();
    // Three times, the server closes every connection while messages are out: the
    // acknowledgements of those are never sent on the new channel (a delivery tag of
    // the old one would acknowledge another message, or close the channel), and the
    // server delivers them again.
    for cut in 1..=3 {
        until("progress", || total() >= cut * count / 4).await;
        close_all_connections(&server);
    }
    until("every message done", || server.counts("cut") == Some((0, 0))).await;
    pipeline.shutdown().await.unwrap();
    assert_no_channel_error(&server).await;
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), count, "every message handled");
    let duplicates: usize = handled.values().map(|n| n - 1).sum();
    println!("RABBITMQ connections-closed handled={count} duplicates={duplicates} bound={bound}");
    assert!(
        duplicates <= 3 * bound,
        "duplicates {duplicates} over 3 × {bound}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queues_delivery_count_is_told_and_gauges_are_documented() {
    let server = RabbitMq::start();
    let (_connection, channel) = channel(&server.url()).await;
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    declare(&channel, "votes", quorum).await;
    publish(&channel, "votes", ["1".to_owned(), "2".to_owned()]).await;

    let config = RabbitMqConfig::new(server.url(), "votes").lag_interval(Duration::from_millis(100));
    let source = RabbitMqSource::connect(config.clone()).await.unwrap();
    let mut plan = Plan::default();
    (plan.max_in_flight, plan.dead_letter) = (10, true);
    source.prepare(&plan).unwrap();
    let acknowledger = source.acknowledger();
    let one = NonZeroUsize::new(1).unwrap();
    let first = source.receive(one).await.unwrap().unwrap();
    assert_eq!(
        (first[0].attempt(), first[0].metadata().delivery_count()),
        (1, None)
    );
    assert_eq!(source.held(), 1);
    // Released (requeued): delivered again, counted.
    acknowledger.release(first).await;
    let mut again = Vec::new();
    while again.len() < 2 {
        again.extend(source.receive(one).await.unwrap().unwrap());
    }
    let requeued = again.iter().find(|m| m.data().as_ref() == b"1").expect("1 again");
    assert_eq!(
        (requeued.attempt(), requeued.metadata().delivery_count()),
        (2, Some(1))
    );
    acknowledger.ack(again, Vec::new()).await;
    assert_eq!(source.held(), 0);

    let value = |name: &str| documented::gauge(name, ("queue", "votes"));
    until("the consumer counted", || {
        value("longshore_rabbitmq_queue_consumers") == Some(1.0)
    })
    .await;
    assert_eq!(value("longshore_rabbitmq_queue_ready_messages"), Some(0.0));
    assert_eq!(documented::assert_exactly_documented("longshore_rabbitmq_"), 2);
    // The dashboard's panels of this source show it, through a real Prometheus.
    prometheus::assert_panels_show("longshore_rabbitmq_", 2).await;
    acknowledger.flush().await;
    source.shutdown().await;

    let error = RabbitMqSource::connect(RabbitMqConfig::new(server.url(), "missing"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with("rabbitmq finding the queue"),
        "{error}"
    );
    assert!(
        std::error::Error::source(&error).is_some(),
        "keeps the client's error"
    );
    let error = RabbitMqSource::connect(RabbitMqConfig::new("amqp://127.0.0.1:1/%2f", "votes"))
        .await
        .unwrap_err();
    assert!(error.to_string().starts_with("rabbitmq connecting"), "{error}");
    let error = RabbitMqSource::connect(RabbitMqConfig::new(server.url(), "votes").prefetch(0))
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with("invalid source.prefetch"),
        "{error}"
    );
}
