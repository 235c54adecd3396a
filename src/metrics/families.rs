//! The metric families, registered once on the process registry, and the handles a
//! pipeline resolves from them at start so that its stages count with one atomic add.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts,
};

use super::registry;
use super::weighted::{Tally, WeightedHistogram, WeightedHistogramVec};
use crate::handler::BatchTrigger;

/// The upper bound of the first duration bucket.
const FIRST_DURATION_BUCKET: Duration = Duration::from_micros(100);

/// A pass of handler calls this long or longer times its next pass call by call (see
/// [`HandlingTimes`]).
pub(crate) const TIME_EACH_AFTER: Duration = FIRST_DURATION_BUCKET;

/// Seconds, from 100 µs to about 30 s.
fn duration_buckets() -> Vec<f64> {
    exponential_buckets(FIRST_DURATION_BUCKET.as_secs_f64(), 2.5, 15).expect("valid buckets")
}

/// Messages per batch, from 1 to about 16,000.
fn size_buckets() -> Vec<f64> {
    exponential_buckets(1.0, 2.0, 15).expect("valid buckets")
}

struct Families {
    received: IntCounterVec,
    acknowledged: IntCounterVec,
    retries: IntCounterVec,
    dead_lettered: IntCounterVec,
    discarded: IntCounterVec,
    released: IntCounterVec,
    dead_letter_failures: IntCounterVec,
    rate_limited: prometheus::CounterVec,
    in_flight: IntGaugeVec,
    max_in_flight: IntGaugeVec,
    paused: IntGaugeVec,
    changes: IntCounterVec,
    message_duration: WeightedHistogramVec,
    stage_demand: IntGaugeVec,
    stage_in_flight: IntGaugeVec,
    stage_tasks: IntGaugeVec,
    stage_stalled: IntGaugeVec,
    stage_retry_waiting: IntGaugeVec,
    stage_limit_waiting: IntGaugeVec,
    source_stalled: IntGaugeVec,
    stage_messages: IntCounterVec,
    stage_duration: WeightedHistogramVec,
    batches: IntCounterVec,
    batch_size: HistogramVec,
    batch_fill: HistogramVec,
}

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let stage = ["pipeline", "stage", "batcher"];
        let families = Families {
            received: counter("longshore_received_messages_total", "Messages received from the source.", &["pipeline"]),
            acknowledged: counter(
                "longshore_acknowledged_messages_total",
                "Messages acknowledged after their last stage, by outcome: successful, failed (for good), or redelivered (failed, handed back to the broker to deliver again).",
                &["pipeline", "outcome"],
            ),
            retries: counter("longshore_retries_total", "Failed attempts followed by another attempt.", &["pipeline"]),
            dead_lettered: counter(
                "longshore_dead_lettered_messages_total",
                "Messages written to the dead-letter destination.",
                &["pipeline"],
            ),
            discarded: counter(
                "longshore_discarded_messages_total",
                "Messages that failed for good with no dead-letter destination: acknowledged as failed, so the source moves past them (Kafka commits past them; SQS redrives them per the queue's policy).",
                &["pipeline"],
            ),
            released: counter(
                "longshore_released_messages_total",
                "Messages handed back to the source unacknowledged at shutdown (waiting for a retry), to be delivered again.",
                &["pipeline"],
            ),
            dead_letter_failures: counter(
                "longshore_dead_letter_write_failures_total",
                "Dead-letter writes that failed and are tried again (the stage waits meanwhile).",
                &["pipeline"],
            ),
            rate_limited: prometheus::CounterVec::new(
                Opts::new("longshore_rate_limited_seconds_total", "Time spent waiting for a rate limit, by limiter (source or a batcher's name)."),
                &["pipeline", "limiter"],
            )
            .expect("valid metric"),
            in_flight: gauge("longshore_in_flight_messages", "Messages received and not yet acknowledged.", &["pipeline"]),
            max_in_flight: gauge(
                "longshore_max_in_flight_messages",
                "The most messages the pipeline may hold at once (its demand bound).",
                &["pipeline"],
            ),
            paused: gauge(
                "longshore_paused",
                "1 while the pipeline is paused (it fetches nothing; what it holds finishes), else 0.",
                &["pipeline"],
            ),
            changes: counter(
                "longshore_control_changes_total",
                "Changes made to the running pipeline, by setting (processors.concurrency, batchers.NAME.batch_size, rate_limit, paused, ...).",
                &["pipeline", "setting"],
            ),
            message_duration: WeightedHistogramVec::new(
                "longshore_message_duration_seconds",
                "Time from receipt to acknowledgement, by outcome: the latency the pipeline adds, handling included.",
                &["pipeline", "outcome"],
                duration_buckets(),
            ),
            stage_demand: gauge(
                "longshore_stage_demand_messages",
                "Messages a stage has asked for and not yet received (the producer: asked of the source).",
                &stage,
            ),
            stage_in_flight: gauge("longshore_stage_in_flight_messages", "Messages inside a stage, waiting retries included.", &stage),
            stage_tasks: gauge(
                "longshore_stage_tasks",
                "Tasks running in a stage (its concurrency; during a shrink, retiring tasks finishing their work included).",
                &stage,
            ),
            stage_stalled: gauge(
                "longshore_stage_stalled",
                "1 while a stage has held messages and finished none for the pipeline's stall.after, else 0.",
                &stage,
            ),
            stage_retry_waiting: gauge(
                "longshore_stage_retry_waiting_messages",
                "Messages of a stage waiting out a retry's backoff: failed ones, and, ordered, those of their key held behind them.",
                &stage,
            ),
            stage_limit_waiting: gauge(
                "longshore_stage_rate_limit_waiting_messages",
                "Messages of a stage waiting for its rate limit before their handler is called (a batcher's batch processors).",
                &stage,
            ),
            source_stalled: gauge(
                "longshore_source_stalled",
                "1 while a part of the source (a Kafka partition, an SQS queue) has had messages outstanding and finished none for the pipeline's stall.after (see StallWatch), else 0.",
                &["pipeline", "part"],
            ),
            stage_messages: counter(
                "longshore_stage_messages_total",
                "Handling attempts in a stage, by outcome (successful or failed).",
                &["pipeline", "stage", "batcher", "outcome"],
            ),
            stage_duration: WeightedHistogramVec::new(
                "longshore_stage_duration_seconds",
                "Time in the handler: one handle_message (processor) or one handle_batch (batch_processor).",
                &stage,
                duration_buckets(),
            ),
            batches: counter(
                "longshore_batches_total",
                "Batches sent to handle_batch, by what closed them (size, timeout, flush, retry).",
                &["pipeline", "batcher", "trigger"],
            ),
            batch_size: histogram("longshore_batch_size_messages", "Messages per batch.", &["pipeline", "batcher"], size_buckets()),
            batch_fill: histogram(
                "longshore_batch_fill_duration_seconds",
                "Time from a batch's first message to the batch being closed.",
                &["pipeline", "batcher"],
                duration_buckets(),
            ),
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 25] = [
            Box::new(families.dead_letter_failures.clone()),
            Box::new(families.received.clone()),
            Box::new(families.acknowledged.clone()),
            Box::new(families.retries.clone()),
            Box::new(families.dead_lettered.clone()),
            Box::new(families.discarded.clone()),
            Box::new(families.released.clone()),
            Box::new(families.rate_limited.clone()),
            Box::new(families.in_flight.clone()),
            Box::new(families.max_in_flight.clone()),
            Box::new(families.paused.clone()),
            Box::new(families.changes.clone()),
            Box::new(families.message_duration.clone()),
            Box::new(families.stage_demand.clone()),
            Box::new(families.stage_in_flight.clone()),
            Box::new(families.stage_tasks.clone()),
            Box::new(families.stage_stalled.clone()),
            Box::new(families.stage_retry_waiting.clone()),
            Box::new(families.stage_limit_waiting.clone()),
            Box::new(families.source_stalled.clone()),
            Box::new(families.stage_messages.clone()),
            Box::new(families.stage_duration.clone()),
            Box::new(families.batches.clone()),
            Box::new(families.batch_size.clone()),
            Box::new(families.batch_fill.clone()),
        ];
        for collector in collectors {
            registry().register(collector).expect("longshore's metrics are registered once");
        }
        families
    })
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric")
}

/// A pipeline's own series.
#[derive(Debug)]
pub(crate) struct PipelineMetrics {
    pub(crate) received: IntCounter,
    pub(crate) successful: IntCounter,
    pub(crate) failed: IntCounter,
    pub(crate) redelivered: IntCounter,
    pub(crate) retries: IntCounter,
    pub(crate) dead_lettered: IntCounter,
    pub(crate) discarded: IntCounter,
    pub(crate) released: IntCounter,
    pub(crate) dead_letter_failures: IntCounter,
    pub(crate) rate_limited: prometheus::Counter,
    pub(crate) in_flight: IntGauge,
    max_in_flight: IntGauge,
    max: i64,
    /// 1 while paused.
    pub(crate) paused: IntGauge,
    pub(crate) successful_duration: WeightedHistogram,
    pub(crate) failed_duration: WeightedHistogram,
    pub(crate) redelivered_duration: WeightedHistogram,
    /// What the producers asked of the source and wait for.
    pub(crate) producer_demand: IntGauge,
}

impl PipelineMetrics {
    pub(crate) fn new(pipeline: &str, max_in_flight: usize) -> Self {
        let f = families();
        let max = i64::try_from(max_in_flight).unwrap_or(i64::MAX);
        let max_in_flight = f.max_in_flight.with_label_values(&[pipeline]);
        // Added, not set: pipelines of one name in one process sum up.
        max_in_flight.add(max);
        PipelineMetrics {
            received: f.received.with_label_values(&[pipeline]),
            successful: f.acknowledged.with_label_values(&[pipeline, "successful"]),
            failed: f.acknowledged.with_label_values(&[pipeline, "failed"]),
            redelivered: f.acknowledged.with_label_values(&[pipeline, "redelivered"]),
            retries: f.retries.with_label_values(&[pipeline]),
            dead_lettered: f.dead_lettered.with_label_values(&[pipeline]),
            discarded: f.discarded.with_label_values(&[pipeline]),
            released: f.released.with_label_values(&[pipeline]),
            dead_letter_failures: f.dead_letter_failures.with_label_values(&[pipeline]),
            rate_limited: f.rate_limited.with_label_values(&[pipeline, "source"]),
            in_flight: f.in_flight.with_label_values(&[pipeline]),
            max_in_flight,
            max,
            paused: f.paused.with_label_values(&[pipeline]),
            successful_duration: f.message_duration.with_label_values(&[pipeline, "successful"]),
            failed_duration: f.message_duration.with_label_values(&[pipeline, "failed"]),
            redelivered_duration: f.message_duration.with_label_values(&[pipeline, "redelivered"]),
            producer_demand: f.stage_demand.with_label_values(&[pipeline, "producer", ""]),
        }
    }
}

/// Counts the changes made to a running pipeline, by setting (series made as settings
/// change: a change is rare, its label known only then).
#[derive(Debug)]
pub(crate) struct ChangeCounts {
    pipeline: String,
}

impl ChangeCounts {
    pub(crate) fn new(pipeline: &str) -> Self {
        ChangeCounts {
            pipeline: pipeline.to_owned(),
        }
    }

    pub(crate) fn inc(&self, setting: &str) {
        families()
            .changes
            .with_label_values(&[&self.pipeline, setting])
            .inc();
    }
}

/// Flags the stalled parts of a pipeline's source (series made when a part first stalls,
/// and kept at 0 once it moves again: at most one per part ever stalled).
#[derive(Debug)]
pub(crate) struct SourceStalls {
    pipeline: String,
}

impl SourceStalls {
    pub(crate) fn new(pipeline: &str) -> Self {
        SourceStalls {
            pipeline: pipeline.to_owned(),
        }
    }

    pub(crate) fn set(&self, part: &str, stalled: bool) {
        families()
            .source_stalled
            .with_label_values(&[&self.pipeline, part])
            .set(i64::from(stalled));
    }
}

impl Drop for PipelineMetrics {
    fn drop(&mut self) {
        self.max_in_flight.sub(self.max);
    }
}

/// The stages, as the `stage` label names them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    Processor,
    Batcher,
    BatchProcessor,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Processor => "processor",
            Stage::Batcher => "batcher",
            Stage::BatchProcessor => "batch_processor",
        }
    }
}

/// One stage's series (of all its tasks together).
#[derive(Debug, Clone)]
pub(crate) struct StageMetrics {
    pub(crate) demand: IntGauge,
    pub(crate) in_flight: IntGauge,
    /// Its running tasks.
    pub(crate) tasks: IntGauge,
    /// 1 while the stall watch finds it stalled.
    pub(crate) stalled: IntGauge,
    /// Messages waiting out a retry's backoff.
    pub(crate) retry_waiting: IntGauge,
    /// Messages waiting for the stage's rate limit.
    pub(crate) limit_waiting: IntGauge,
    pub(crate) successful: IntCounter,
    pub(crate) failed: IntCounter,
    pub(crate) duration: WeightedHistogram,
    /// The handler calls its tasks are in (for the stall watch).
    pub(crate) calls: std::sync::Arc<super::calls::Calls>,
}

impl StageMetrics {
    pub(crate) fn new(pipeline: &str, stage: Stage, batcher: &str) -> Self {
        let f = families();
        let labels = [pipeline, stage.label(), batcher];
        StageMetrics {
            demand: f.stage_demand.with_label_values(&labels),
            in_flight: f.stage_in_flight.with_label_values(&labels),
            tasks: f.stage_tasks.with_label_values(&labels),
            stalled: f.stage_stalled.with_label_values(&labels),
            retry_waiting: f.stage_retry_waiting.with_label_values(&labels),
            limit_waiting: f.stage_limit_waiting.with_label_values(&labels),
            successful: f
                .stage_messages
                .with_label_values(&[pipeline, stage.label(), batcher, "successful"]),
            failed: f
                .stage_messages
                .with_label_values(&[pipeline, stage.label(), batcher, "failed"]),
            duration: f.stage_duration.with_label_values(&labels),
            calls: std::sync::Arc::default(),
        }
    }

    /// Counts `n` messages as demanded until the guard is dropped (also when the waiting
    /// task is cancelled).
    pub(crate) fn demanding(&self, n: usize) -> Held {
        Held::new(&self.demand, n)
    }

    /// Counts `n` messages as inside the stage until the guard is dropped.
    pub(crate) fn holding(&self, n: usize) -> Held {
        Held::new(&self.in_flight, n)
    }

    /// Counts messages waiting for a retry, none yet, until the guard is dropped.
    pub(crate) fn retry_waiting(&self) -> Held {
        Held::new(&self.retry_waiting, 0)
    }
}

/// Times the handler calls of one pass of a stage and counts their outcomes, publishing
/// once when dropped.
///
/// Reading the clock around every call would cost as much as a quick handler. So a pass
/// expected to be quick (`each == false`) reads it once at the end: if the whole pass took
/// less than the first bucket's bound, so did every call in it, and giving each the mean
/// puts the same counts in the same buckets, with the same sum. A slower pass is
/// approximated that way once, and [`HandlingTimes::finish`] says to time each call of
/// the next one. Timed, a call is one clock reading and one comparison: only a call past
/// the first bucket is measured alone; those within it share their total, which the
/// readings give, calls following each other.
#[derive(Debug)]
pub(crate) struct HandlingTimes<'a> {
    metrics: &'a StageMetrics,
    local: Tally<'a>,
    each: bool,
    /// When the current part of the pass started (`None`: paused, between parts).
    part: Option<Instant>,
    /// The time of the parts so far: handling, not what the stage did between them
    /// (settling what was handled).
    handling: Duration,
    /// Timed: when the last call ended (or the part started), and the end a call within
    /// the first bucket has at the latest.
    since: Instant,
    quick_until: Instant,
    /// Timed calls within the first bucket; the time of all timed calls, and of those
    /// past the first bucket (measured alone).
    quick: u32,
    timed: Duration,
    slow: Duration,
    untimed: u32,
    successful: u64,
    failed: u64,
}

impl<'a> HandlingTimes<'a> {
    /// `each`: read the clock around every call. The pass's first part starts now.
    pub(crate) fn new(metrics: &'a StageMetrics, each: bool) -> Self {
        let now = Instant::now();
        HandlingTimes {
            metrics,
            local: metrics.duration.tally(),
            each,
            part: Some(now),
            handling: Duration::ZERO,
            since: now,
            quick_until: now + FIRST_DURATION_BUCKET,
            quick: 0,
            timed: Duration::ZERO,
            slow: Duration::ZERO,
            untimed: 0,
            successful: 0,
            failed: 0,
        }
    }

    /// A handler call just ended with these outcomes; it started at the end of the last
    /// one (or when the part started).
    ///
    /// Inlined into the handler loop, timed calls aside: a call per message would cost
    /// a quick handler's untimed pass more than its counts do.
    #[inline(always)]
    pub(crate) fn handled(&mut self, successful: usize, failed: usize) {
        debug_assert!(self.part.is_some(), "a call handled between parts");
        if self.each {
            self.timed_call();
        } else {
            self.untimed += 1;
        }
        self.successful += successful as u64;
        self.failed += failed as u64;
    }

    /// A timed call just ended: its time, from the end of the last.
    #[inline(never)]
    fn timed_call(&mut self) {
        let now = Instant::now();
        if now <= self.quick_until {
            self.quick += 1;
        } else {
            let took = now.duration_since(self.since);
            self.slow += took;
            self.local.observe_n(took.as_secs_f64(), 1);
        }
        self.since = now;
        self.quick_until = now + FIRST_DURATION_BUCKET;
    }

    /// The part's calls are done: what the stage does next (settling them) is not
    /// handling. Returns the handling time of the pass so far.
    pub(crate) fn pause(&mut self) -> Duration {
        if let Some(part) = self.part.take() {
            self.handling += part.elapsed();
            if self.each {
                // The part's timed calls followed each other from its start.
                self.timed += self.since.saturating_duration_since(part);
            }
        }
        self.handling
    }

    /// The next part starts now, not at the end of the last one.
    pub(crate) fn resume(&mut self) {
        debug_assert!(self.part.is_none(), "resumed without a pause");
        let now = Instant::now();
        self.part = Some(now);
        self.since = now;
        self.quick_until = now + FIRST_DURATION_BUCKET;
    }

    /// Publishes; returns whether the next pass should time each call: this one was
    /// slow enough for calls to fall beyond the first bucket.
    pub(crate) fn finish(mut self) -> bool {
        self.pause() >= FIRST_DURATION_BUCKET
    }
}

impl Drop for HandlingTimes<'_> {
    fn drop(&mut self) {
        let handling = self.pause();
        if self.quick > 0 {
            // Each within the first bucket: their mean is too.
            let mean = self.timed.saturating_sub(self.slow) / self.quick;
            self.local.observe_n(mean.as_secs_f64(), u64::from(self.quick));
        }
        if self.untimed > 0 {
            let mean = handling / self.untimed;
            self.local.observe_n(mean.as_secs_f64(), u64::from(self.untimed));
        }
        self.local.flush();
        self.metrics.successful.inc_by(self.successful);
        self.metrics.failed.inc_by(self.failed);
    }
}

/// A gauge raised by `n` while held.
#[derive(Debug)]
pub(crate) struct Held {
    gauge: IntGauge,
    n: i64,
}

impl Held {
    pub(crate) fn new(gauge: &IntGauge, n: usize) -> Self {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        gauge.add(n);
        Held {
            gauge: gauge.clone(),
            n,
        }
    }

    /// Lowers the count by `n` of the messages held (they left the stage).
    pub(crate) fn release(&mut self, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX).min(self.n);
        self.gauge.sub(n);
        self.n -= n;
    }

    /// Raises the count by `n` more messages.
    pub(crate) fn add(&mut self, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.gauge.add(n);
        self.n += n;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.sub(self.n);
    }
}

/// A batcher's own series.
#[derive(Debug, Clone)]
pub(crate) struct BatcherMetrics {
    pub(crate) stage: StageMetrics,
    pub(crate) batch_processor: StageMetrics,
    pub(crate) size: Histogram,
    pub(crate) fill: Histogram,
    pub(crate) rate_limited: prometheus::Counter,
    batches: [IntCounter; 4],
}

impl BatcherMetrics {
    pub(crate) fn new(pipeline: &str, batcher: &str) -> Self {
        let f = families();
        let batches = |trigger: BatchTrigger| {
            f.batches
                .with_label_values(&[pipeline, batcher, trigger.as_str()])
        };
        BatcherMetrics {
            stage: StageMetrics::new(pipeline, Stage::Batcher, batcher),
            batch_processor: StageMetrics::new(pipeline, Stage::BatchProcessor, batcher),
            size: f.batch_size.with_label_values(&[pipeline, batcher]),
            fill: f.batch_fill.with_label_values(&[pipeline, batcher]),
            rate_limited: f.rate_limited.with_label_values(&[pipeline, batcher]),
            batches: [
                batches(BatchTrigger::Size),
                batches(BatchTrigger::Timeout),
                batches(BatchTrigger::Flush),
                batches(BatchTrigger::Retry),
            ],
        }
    }

    pub(crate) fn batch(&self, trigger: BatchTrigger) -> &IntCounter {
        &self.batches[trigger as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quick_pass_is_timed_once_and_every_call_counted() {
        let metrics = StageMetrics::new("unit-quick", Stage::Processor, "");
        let mut timing = HandlingTimes::new(&metrics, false);
        for _ in 0..10 {
            timing.handled(1, 0);
        }
        timing.handled(0, 1);
        assert!(!timing.finish(), "a pass of no work is quick");
        let (count, sum) = metrics.duration.count_and_sum();
        assert_eq!(count, 11);
        assert!(sum < FIRST_DURATION_BUCKET.as_secs_f64());
        assert_eq!((metrics.successful.get(), metrics.failed.get()), (10, 1));
    }

    #[test]
    fn untimed_calls_end_where_the_pass_read_the_clock_not_when_settled() {
        let metrics = StageMetrics::new("unit-settled", Stage::Processor, "");
        let mut timing = HandlingTimes::new(&metrics, false);
        for _ in 0..4 {
            timing.handled(1, 0);
        }
        let first = timing.pause();
        // Settling a part (acknowledging, waiting for a full batcher) is not handling.
        let settle = Duration::from_millis(50);
        std::thread::sleep(settle);
        timing.resume();
        timing.handled(1, 0);
        let handling = timing.pause();
        assert!(handling >= first);
        std::thread::sleep(settle);
        drop(timing);
        let (count, sum) = metrics.duration.count_and_sum();
        assert_eq!(count, 5);
        assert!(
            sum <= handling.as_secs_f64() + 1e-6,
            "the calls took {handling:?} but were observed as {sum} s: the settling counted"
        );
    }

    #[test]
    fn timed_calls_within_the_first_bucket_share_their_time_and_a_slow_one_has_its_own() {
        let metrics = StageMetrics::new("unit-timed", Stage::Processor, "");
        let mut timing = HandlingTimes::new(&metrics, true);
        for _ in 0..3 {
            timing.handled(1, 0);
        }
        std::thread::sleep(FIRST_DURATION_BUCKET * 3);
        timing.handled(1, 0);
        let handling = timing.pause();
        drop(timing);
        let (count, sum) = metrics.duration.count_and_sum();
        assert_eq!(count, 4);
        assert!(sum >= 3.0 * FIRST_DURATION_BUCKET.as_secs_f64());
        assert!(
            sum <= handling.as_secs_f64() + 1e-6,
            "{sum} s observed of {handling:?}"
        );
        let buckets = metrics.duration.buckets();
        assert_eq!(buckets[0], 3, "the quick calls in the first bucket: {buckets:?}");
        assert_eq!(buckets.iter().sum::<u64>(), 4);
    }

    #[test]
    fn timed_parts_settled_between_keep_their_calls_in_the_first_bucket() {
        let metrics = StageMetrics::new("unit-timed-parts", Stage::Processor, "");
        let mut timing = HandlingTimes::new(&metrics, true);
        timing.handled(1, 0);
        timing.pause();
        // Settling the first part, longer than the first bucket.
        std::thread::sleep(FIRST_DURATION_BUCKET * 10);
        timing.resume();
        timing.handled(1, 0);
        timing.handled(1, 0);
        let handling = timing.pause();
        drop(timing);
        let (count, sum) = metrics.duration.count_and_sum();
        assert_eq!(count, 3);
        assert!(
            sum <= handling.as_secs_f64() + 1e-6,
            "{sum} s observed of {handling:?}"
        );
        assert_eq!(
            metrics.duration.buckets()[0],
            3,
            "the settling counted as a call's time"
        );
    }

    #[test]
    fn a_slow_pass_asks_for_each_call_to_be_timed() {
        let metrics = StageMetrics::new("unit-slow", Stage::Processor, "");
        let mut timing = HandlingTimes::new(&metrics, false);
        std::thread::sleep(FIRST_DURATION_BUCKET * 2);
        timing.handled(1, 0);
        assert!(timing.finish());

        let mut timing = HandlingTimes::new(&metrics, true);
        timing.handled(1, 0);
        std::thread::sleep(FIRST_DURATION_BUCKET * 2);
        timing.handled(1, 0);
        timing.finish();
        let (count, sum) = metrics.duration.count_and_sum();
        assert_eq!(count, 3);
        assert!(sum >= 4.0 * FIRST_DURATION_BUCKET.as_secs_f64());
    }
}
