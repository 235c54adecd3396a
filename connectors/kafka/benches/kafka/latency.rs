//! The latency case on the mock cluster: records produced at a fixed rate, half of the
//! throughput longshore reached in the same run (an open loop: production does not wait
//! for the consumer), and each sampled record timed to its acknowledgement from its
//! receipt from the source (`Message::received_at`: the latency longshore adds) and from
//! its production (end to end: the broker's and librdkafka's fetch included, and any
//! wait for demand). The producer starts once the consumer holds every partition, in the
//! consumer's process, and writes its clock into each payload.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use longshore::source::{Acknowledger, PartitionBy, Plan, Redelivery, Source, SourcePanel};
use longshore::{BoxError, BuildError, Message, Pipeline, Processors};
use longshore_kafka::{KafkaConfig, KafkaMetadata, KafkaSource};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use super::support::{Countdown, Samples};

/// The topics of the latency case, one per consumer: empty until the consumer holds it.
pub(crate) const TOPICS: [&str; 2] = ["latency", "latency-raw"];
pub(crate) const PARTITIONS: i32 = super::MOCK_PARTITIONS;
/// One record in this many is timed.
const SAMPLE_EVERY: u64 = 64;
/// How often the producer sends what is due.
const TICK: Duration = Duration::from_micros(100);

/// Consumes `count` records produced at `rate` a second: the rate reached, the
/// receipt-to-acknowledgement p50 and p99, and the production-to-acknowledgement p50 and
/// p99, in microseconds.
pub(crate) fn run(bootstrap: &str, group: &str, count: usize, rate: f64) -> [f64; 5] {
    let topic = TOPICS[0];
    let samples = Arc::new(Samples::default());
    let end_to_end = Arc::new(Samples::default());
    let base = Instant::now();
    let countdown = Arc::new(Countdown::new(count));
    let runtime = super::runtime();
    runtime.block_on(async {
        let source = KafkaSource::new(KafkaConfig::new(bootstrap, group, [topic])).expect("source");
        let status = source.status();
        let timed = Timed {
            inner: source,
            samples: samples.clone(),
            end_to_end: end_to_end.clone(),
            base,
        };
        let pipeline = Pipeline::builder(timed, Counted(countdown.clone()))
            .processors(Processors::new(2))
            .start()
            .unwrap();
        // Setup, not measurement: the assignment has no event to wait for.
        let joined = Instant::now();
        while status.partitions().len() < PARTITIONS as usize {
            assert!(
                joined.elapsed() < Duration::from_secs(60),
                "the consumer never joined"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let bootstrap = bootstrap.to_owned();
        let started = Instant::now();
        let producer = std::thread::spawn(move || produce(&bootstrap, topic, count, rate, base));
        if tokio::time::timeout(Duration::from_secs(300), countdown.finished())
            .await
            .is_err()
        {
            panic!("the latency run consumed nothing more for 5 minutes");
        }
        let reached = count as f64 / started.elapsed().as_secs_f64();
        producer.join().expect("the producer ends");
        pipeline.shutdown().await.expect("drains");
        [
            reached,
            samples.percentile(0.50),
            samples.percentile(0.99),
            end_to_end.percentile(0.50),
            end_to_end.percentile(0.99),
        ]
    })
}

/// The baseline: the same production read by a raw rdkafka loop (longshore's fetch
/// settings), each sampled record timed from its production to its receipt. The rate
/// reached, and that latency's p50 and p99 in microseconds.
pub(crate) fn raw(bootstrap: &str, group: &str, count: usize, rate: f64) -> [f64; 3] {
    let topic = TOPICS[1];
    let consumer = super::raw_consumer(bootstrap, group, topic);
    let joined = Instant::now();
    while consumer.assignment().map_or(0, |a| a.count()) < PARTITIONS as usize {
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "the consumer never joined"
        );
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(10)) {
            panic!("a record before any was produced");
        }
    }
    let base = Instant::now();
    let samples = Samples::default();
    let bootstrap = bootstrap.to_owned();
    let started = Instant::now();
    let producer = std::thread::spawn(move || produce(&bootstrap, topic, count, rate, base));
    let mut seen = 0;
    let mut last = Instant::now();
    while seen < count {
        assert!(
            last.elapsed() < Duration::from_secs(300),
            "the raw latency run consumed nothing more for 5 minutes"
        );
        if let Some(Ok(record)) = consumer.poll(Duration::from_millis(100)) {
            last = Instant::now();
            if (seen as u64).is_multiple_of(SAMPLE_EVERY) {
                let now = Instant::now();
                samples.record_between(base + produced(record.payload().expect("a payload")), now);
            }
            seen += 1;
        }
    }
    let reached = count as f64 / started.elapsed().as_secs_f64();
    producer.join().expect("the producer ends");
    [reached, samples.percentile(0.50), samples.percentile(0.99)]
}

/// When a payload was produced: the nanoseconds since the run's base at its start.
fn produced(payload: &[u8]) -> Duration {
    let stamp: [u8; 8] = payload[..8].try_into().expect("8 bytes");
    Duration::from_nanos(u64::from_le_bytes(stamp))
}

/// Produces `count` records of 100 bytes at `rate` a second, round-robin over the
/// partitions, in a burst every [`TICK`] of what is due; each payload starts with the
/// nanoseconds since `base` at its send.
fn produce(bootstrap: &str, topic: &'static str, count: usize, rate: f64, base: Instant) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut payload = [b'x'; 100];
    let start = Instant::now();
    let mut sent = 0;
    while sent < count {
        let due = ((start.elapsed().as_secs_f64() * rate) as usize + 1).min(count);
        while sent < due {
            let key = (sent % 1000).to_string();
            payload[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
            let mut record = BaseRecord::to(topic)
                .key(&key)
                .payload(&payload[..])
                .partition((sent % PARTITIONS as usize) as i32);
            while let Err((_, back)) = producer.send(record) {
                record = back;
                producer.poll(Duration::from_millis(1));
            }
            sent += 1;
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(TICK);
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("all records written");
}

/// Counts each record handled.
struct Counted(Arc<Countdown>);

impl longshore::Handler for Counted {
    type Item = bytes::Bytes;
    type Metadata = longshore_kafka::KafkaMetadata;

    async fn handle_message(&self, message: &mut longshore_kafka::KafkaMessage) -> Result<(), BoxError> {
        std::hint::black_box(message.metadata().payload());
        self.0.handled();
        Ok(())
    }
}

/// A source whose acknowledgements are timed: everything else is the inner source's.
struct Timed<S> {
    inner: S,
    samples: Arc<Samples>,
    end_to_end: Arc<Samples>,
    base: Instant,
}

/// Times one acknowledged record in [`SAMPLE_EVERY`] from its receipt and from its
/// production, then passes the call on.
struct TimedAck<A> {
    inner: A,
    samples: Arc<Samples>,
    end_to_end: Arc<Samples>,
    base: Instant,
    seen: AtomicU64,
}

type M = KafkaMetadata;

impl<A: Acknowledger<M>> Acknowledger<M> for TimedAck<A> {
    async fn ack<T: Send + 'static>(&self, successful: Vec<Message<T, M>>, failed: Vec<Message<T, M>>) {
        let first = self.seen.fetch_add(successful.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        for (i, message) in successful.iter().enumerate() {
            if (first + i as u64).is_multiple_of(SAMPLE_EVERY) {
                let at = message.received_at().expect("set on receipt");
                self.samples.record_between(at, now);
                let payload = message.metadata().payload().expect("a payload");
                self.end_to_end.record_between(self.base + produced(payload), now);
            }
        }
        self.inner.ack(successful, failed).await;
    }

    fn flush(&self) -> impl Future<Output = ()> + Send {
        self.inner.flush()
    }

    fn release<T: Send + 'static>(&self, messages: Vec<Message<T, M>>) -> impl Future<Output = ()> + Send {
        self.inner.release(messages)
    }

    fn origin<T>(&self, message: &Message<T, M>) -> Option<String> {
        self.inner.origin(message)
    }

    fn acknowledges_each(&self) -> bool {
        self.inner.acknowledges_each()
    }
}

impl<S: Source<Metadata = M>> Source for Timed<S> {
    type Data = S::Data;
    type Metadata = S::Metadata;
    type Acknowledger = Arc<TimedAck<S::Acknowledger>>;

    fn acknowledger(&self) -> Self::Acknowledger {
        Arc::new(TimedAck {
            inner: self.inner.acknowledger(),
            samples: self.samples.clone(),
            end_to_end: self.end_to_end.clone(),
            base: self.base,
            seen: AtomicU64::new(0),
        })
    }

    fn receive(
        &self,
        demand: NonZeroUsize,
    ) -> impl Future<Output = Result<Option<Vec<Message<S::Data, S::Metadata>>>, BoxError>> + Send {
        self.inner.receive(demand)
    }

    fn partition_by(&self) -> Option<PartitionBy<S::Data, S::Metadata>> {
        self.inner.partition_by()
    }

    fn redelivery(&self) -> Redelivery {
        self.inner.redelivery()
    }

    fn drops_fetch_on_pause(&self) -> bool {
        self.inner.drops_fetch_on_pause()
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        self.inner.shutdown()
    }

    fn prepare(&self, plan: &Plan) -> Result<(), BuildError> {
        self.inner.prepare(plan)
    }

    fn panel(&self) -> Option<Arc<dyn SourcePanel>> {
        self.inner.panel()
    }

    fn liveness(&self) -> Result<(), BoxError> {
        self.inner.liveness()
    }
}
