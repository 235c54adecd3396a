//! The figures of `/topology.json`: per pipeline and stage, what the metrics registry and
//! the pipeline's own counts say now, the rates over the last window of at least a
//! second, and the stage that limits throughput, with the reason in words.
//!
//! Computed here, not in the page, so that they are the same for every client and
//! tested in Rust; the page only draws them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::proto::{MetricFamily, MetricType};
use serde::Serialize;

use super::registry;
use crate::control::Control;
use crate::pipeline::Stats;
use crate::source::SourcePart;

/// Rates are taken over at least this long: the page refreshes each second.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// A stage busier than this (handler time over wall time, per task) limits throughput.
const BUSY: f64 = 80.0;

/// The stages, in the order messages pass them, as the metrics label them.
const STAGES: [&str; 4] = ["producer", "processor", "batcher", "batch_processor"];

/// One stage's figures, as the page shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct StageView {
    pub(crate) stage: &'static str,
    /// The batcher's name; empty for the producer and the processors.
    pub(crate) batcher: String,
    pub(crate) tasks: i64,
    /// Messages asked for and not yet received.
    pub(crate) demand: i64,
    /// Messages inside the stage.
    pub(crate) in_flight: i64,
    /// Of those, messages waiting out a retry's backoff (ordered: with those held behind them).
    pub(crate) retry_waiting: i64,
    /// Handling attempts per second over the window.
    pub(crate) per_second: f64,
    /// Handler time over wall time, per task, over the window.
    pub(crate) busy_percent: f64,
    /// Handler latency percentiles over the window (a bucket's upper bound), if any
    /// call ended in it.
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    /// Batcher: batches closed per second, by trigger (size, timeout, flush, retry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) batches_per_second: Option<HashMap<String, f64>>,
}

/// The stage that limits throughput, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Bottleneck {
    /// `producer`, `processor`, `batch_processor`; `none` when nothing limits.
    pub(crate) stage: &'static str,
    pub(crate) batcher: String,
    pub(crate) reason: String,
}

/// A stalled stage.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stalled {
    pub(crate) stage: String,
    pub(crate) seconds: f64,
}

/// One part of the source (see [`SourcePanel`](crate::source::SourcePanel)), with how
/// long its waiting messages would take to drain at the window's pace.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PartView {
    #[serde(flatten)]
    pub(crate) part: SourcePart,
    /// `waiting` over how fast it fell in the window; `None` while it does not fall.
    pub(crate) drain_seconds: Option<f64>,
}

/// One pipeline's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PipelineView {
    pub(crate) name: String,
    pub(crate) paused: bool,
    pub(crate) received: u64,
    pub(crate) successful: u64,
    pub(crate) failed: u64,
    pub(crate) retried: u64,
    pub(crate) in_flight: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) received_per_second: f64,
    pub(crate) acknowledged_per_second: f64,
    /// Share of the window fetching waited for the pipeline's rate limit.
    pub(crate) rate_limited_percent: f64,
    pub(crate) stages: Vec<StageView>,
    pub(crate) bottleneck: Bottleneck,
    /// The stages the stall watch finds stalled, with how long (see `StallWatch`).
    pub(crate) stalled: Vec<Stalled>,
    /// The source's parts, if it shows them.
    pub(crate) source: Option<Vec<PartView>>,
    /// The window the rates were taken over, in seconds (0 before the first).
    pub(crate) window_seconds: f64,
    /// The settings a control could change (see the control surface).
    pub(crate) settings: serde_json::Value,
}

/// A stage's counters at one moment.
#[derive(Debug, Clone, Default)]
struct StageSample {
    tasks: i64,
    demand: i64,
    in_flight: i64,
    retry_waiting: i64,
    handled: f64,
    duration_sum: f64,
    /// Cumulative counts per upper bound, as the histogram keeps them.
    buckets: Vec<(f64, u64)>,
    batches: HashMap<String, f64>,
}

/// A pipeline's counters at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    stats: Stats,
    stages: HashMap<(String, String), StageSample>,
    rate_limited: f64,
    /// The source's parts, if it shows them.
    parts: Option<Vec<SourcePart>>,
}

/// The rates of one window.
#[derive(Debug, Clone, Default)]
struct Rates {
    window: Duration,
    received: f64,
    acknowledged: f64,
    rate_limited_percent: f64,
    stages: HashMap<(String, String), StageRates>,
}

#[derive(Debug, Clone, Default)]
struct StageRates {
    per_second: f64,
    busy_percent: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    batches: HashMap<String, f64>,
}

/// How fast a part's waiting messages fall, between the last two readings that
/// differed: a source refreshes them every few seconds (Kafka: `lag_interval`), not at
/// each window.
#[derive(Debug, Clone, Copy)]
struct Pace {
    waiting: u64,
    at: Instant,
    per_second: f64,
}

/// A pace not seen to change for this long is no pace any more.
const PACE_KEPT: Duration = Duration::from_secs(60);

impl Pace {
    /// The pace after reading `waiting` now.
    fn next(previous: Option<Pace>, waiting: u64, now: Instant) -> Pace {
        match previous {
            Some(pace) if pace.waiting == waiting => pace,
            Some(pace) => {
                let seconds = now.duration_since(pace.at).as_secs_f64().max(f64::EPSILON);
                Pace {
                    waiting,
                    at: now,
                    per_second: (pace.waiting as f64 - waiting as f64) / seconds,
                }
            }
            None => Pace {
                waiting,
                at: now,
                per_second: 0.0,
            },
        }
    }

    /// The seconds left until nothing waits, while it falls.
    fn drain_seconds(&self, now: Instant) -> Option<f64> {
        let fresh = now.duration_since(self.at) < PACE_KEPT;
        (fresh && self.per_second > 0.0).then(|| self.waiting as f64 / self.per_second)
    }
}

/// Per pipeline: the window's start, the rates of the last window completed, and the
/// pace of each part of its source.
#[derive(Debug, Default)]
pub(crate) struct Feeds {
    windows: Mutex<HashMap<String, Window>>,
}

#[derive(Debug)]
struct Window {
    start: Sample,
    rates: Rates,
    paces: HashMap<String, Pace>,
}

impl Feeds {
    /// Forgets the windows of pipelines other than `running`: ended ones leave nothing.
    pub(crate) fn keep_only<'a>(&self, running: impl Iterator<Item = &'a str>) {
        let running: std::collections::HashSet<&str> = running.collect();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.retain(|name, _| running.contains(name.as_str()));
    }

    /// The figures of `control`'s pipeline now.
    pub(crate) fn view(&self, control: &Control, families: &[MetricFamily]) -> PipelineView {
        let parts = control.source.as_ref().map(|source| source.parts());
        let now = sample(&control.name, control.stats.get(), families, parts);
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window = windows.entry(control.name.to_string()).or_insert_with(|| Window {
            start: now.clone(),
            rates: Rates::default(),
            paces: HashMap::new(),
        });
        if now.at.duration_since(window.start.at) >= WINDOW {
            window.rates = between(&window.start, &now);
            window.start = now.clone();
        }
        let parts = now.parts.iter().flatten();
        // Only the parts there now: a partition revoked leaves no pace behind.
        window.paces = parts
            .filter_map(|part| {
                let previous = window.paces.get(&part.name).copied();
                Some((part.name.clone(), Pace::next(previous, part.waiting?, now.at)))
            })
            .collect();
        let rates = window.rates.clone();
        let drains: HashMap<String, f64> = window
            .paces
            .iter()
            .filter_map(|(name, pace)| Some((name.clone(), pace.drain_seconds(now.at)?)))
            .collect();
        drop(windows);
        view(control, &now, &rates, &drains)
    }
}

/// The registry's families, gathered once per request for every pipeline.
pub(crate) fn gather() -> Vec<MetricFamily> {
    registry().gather()
}

fn label<'a>(metric: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    metric
        .get_label()
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

fn sample(pipeline: &str, stats: Stats, families: &[MetricFamily], parts: Option<Vec<SourcePart>>) -> Sample {
    let mut stages: HashMap<(String, String), StageSample> = HashMap::new();
    let mut rate_limited = 0.0;
    for family in families {
        for metric in family.get_metric() {
            if label(metric, "pipeline") != pipeline {
                continue;
            }
            let key = (
                label(metric, "stage").to_owned(),
                label(metric, "batcher").to_owned(),
            );
            match family.name() {
                "longshore_stage_tasks" => {
                    stages.entry(key).or_default().tasks = metric.get_gauge().get_value() as i64
                }
                "longshore_stage_demand_messages" => {
                    stages.entry(key).or_default().demand = metric.get_gauge().get_value() as i64;
                }
                "longshore_stage_in_flight_messages" => {
                    stages.entry(key).or_default().in_flight = metric.get_gauge().get_value() as i64;
                }
                "longshore_stage_retry_waiting_messages" => {
                    stages.entry(key).or_default().retry_waiting = metric.get_gauge().get_value() as i64;
                }
                "longshore_stage_messages_total" => {
                    stages.entry(key).or_default().handled += metric.get_counter().get_value()
                }
                "longshore_stage_duration_seconds" if family.get_field_type() == MetricType::HISTOGRAM => {
                    let histogram = metric.get_histogram();
                    let stage = stages.entry(key).or_default();
                    stage.duration_sum = histogram.get_sample_sum();
                    stage.buckets = histogram
                        .get_bucket()
                        .iter()
                        .map(|b| (b.upper_bound(), b.cumulative_count()))
                        .collect();
                }
                "longshore_batches_total" => {
                    let batcher = label(metric, "batcher").to_owned();
                    let stage = stages.entry(("batcher".to_owned(), batcher)).or_default();
                    stage.batches.insert(
                        label(metric, "trigger").to_owned(),
                        metric.get_counter().get_value(),
                    );
                }
                "longshore_rate_limited_seconds_total" if label(metric, "limiter") == "source" => {
                    rate_limited = metric.get_counter().get_value();
                }
                _ => {}
            }
        }
    }
    Sample {
        at: Instant::now(),
        stats,
        stages,
        rate_limited,
        parts,
    }
}

/// The upper bound (ms) of the bucket holding quantile `q` of the calls between two
/// cumulative histograms.
fn quantile(start: &[(f64, u64)], end: &[(f64, u64)], q: f64) -> Option<f64> {
    let counts: Vec<(f64, u64)> = end
        .iter()
        .map(|&(bound, count)| {
            let before = start.iter().find(|(b, _)| *b == bound).map_or(0, |(_, c)| *c);
            (bound, count.saturating_sub(before))
        })
        .collect();
    let total = counts.last().map(|&(_, count)| count)?;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    counts
        .iter()
        .find(|&&(_, count)| count >= rank)
        .map(|&(bound, _)| bound * 1000.0)
}

fn between(start: &Sample, end: &Sample) -> Rates {
    let seconds = end.at.duration_since(start.at).as_secs_f64().max(f64::EPSILON);
    let per_second = |a: f64, b: f64| ((b - a) / seconds).max(0.0);
    let stages = end
        .stages
        .iter()
        .map(|(key, now)| {
            let before = start.stages.get(key).cloned().unwrap_or_default();
            let busy_time = (now.duration_sum - before.duration_sum).max(0.0);
            let tasks = now.tasks.max(1) as f64;
            let batches = now
                .batches
                .iter()
                .map(|(trigger, count)| {
                    let was = before.batches.get(trigger).copied().unwrap_or(0.0);
                    (trigger.clone(), per_second(was, *count))
                })
                .collect();
            let rates = StageRates {
                per_second: per_second(before.handled, now.handled),
                busy_percent: (busy_time / seconds / tasks * 100.0).min(100.0),
                p50_ms: quantile(&before.buckets, &now.buckets, 0.5),
                p99_ms: quantile(&before.buckets, &now.buckets, 0.99),
                batches,
            };
            (key.clone(), rates)
        })
        .collect();
    let acknowledged = |s: &Stats| (s.successful + s.failed + s.redelivered) as f64;
    Rates {
        window: end.at.duration_since(start.at),
        received: per_second(start.stats.received as f64, end.stats.received as f64),
        acknowledged: per_second(acknowledged(&start.stats), acknowledged(&end.stats)),
        rate_limited_percent: (per_second(start.rate_limited, end.rate_limited) * 100.0).min(100.0),
        stages,
    }
}

fn view(control: &Control, now: &Sample, rates: &Rates, drains: &HashMap<String, f64>) -> PipelineView {
    let mut stages: Vec<StageView> = now
        .stages
        .iter()
        .filter(|((stage, _), _)| STAGES.contains(&stage.as_str()))
        .map(|(key, sample)| {
            let stage = STAGES.iter().find(|s| **s == key.0).copied().unwrap_or("");
            let rate = rates.stages.get(key).cloned().unwrap_or_default();
            StageView {
                stage,
                batcher: key.1.clone(),
                tasks: sample.tasks,
                demand: sample.demand,
                in_flight: sample.in_flight,
                retry_waiting: sample.retry_waiting,
                per_second: rate.per_second,
                busy_percent: rate.busy_percent,
                p50_ms: rate.p50_ms,
                p99_ms: rate.p99_ms,
                batches_per_second: (stage == "batcher").then_some(rate.batches),
            }
        })
        .collect();
    let order = |view: &StageView| STAGES.iter().position(|s| *s == view.stage);
    stages.sort_by(|a, b| (order(a), &a.batcher).cmp(&(order(b), &b.batcher)));
    let paused = control.pause.is_paused();
    let stalled: Vec<Stalled> = control
        .stalls
        .list()
        .into_iter()
        .map(|(stage, idle)| Stalled {
            stage,
            seconds: idle.as_secs_f64(),
        })
        .collect();
    let mut bottleneck = bottleneck(paused, &now.stats, rates, &stages);
    if let Some(first) = stalled.first() {
        // A stall says more than any rate: nothing moves there.
        let (stage, batcher) = first.stage.split_once(' ').unwrap_or((&first.stage, ""));
        let view = stages.iter().find(|s| s.stage == stage && s.batcher == batcher);
        if stage == "source" {
            bottleneck = Bottleneck {
                stage: "producer",
                batcher: String::new(),
                reason: format!(
                    "the source's {batcher} stalled: messages outstanding or waiting, none finished for {:.0} s",
                    first.seconds
                ),
            };
        } else if let Some(view) = view {
            bottleneck = Bottleneck {
                stage: view.stage,
                batcher: view.batcher.clone(),
                reason: format!(
                    "{} stalled: holds {} messages and has finished none for {:.0} s",
                    named(view),
                    view.in_flight,
                    first.seconds
                ),
            };
        }
    }
    let mut settings = control.to_json();
    if let Some(settings) = settings.as_object_mut() {
        settings.remove("stats");
        settings.remove("changes");
    }
    PipelineView {
        name: control.name.to_string(),
        paused,
        received: now.stats.received,
        successful: now.stats.successful,
        failed: now.stats.failed,
        retried: now.stats.retried,
        in_flight: now.stats.in_flight,
        max_in_flight: now.stats.max_in_flight,
        received_per_second: rates.received,
        acknowledged_per_second: rates.acknowledged,
        rate_limited_percent: rates.rate_limited_percent,
        stages,
        bottleneck,
        stalled,
        source: now.parts.as_ref().map(|parts| {
            let parts = parts.iter().cloned();
            parts
                .map(|part| PartView {
                    drain_seconds: drains.get(&part.name).copied(),
                    part,
                })
                .collect()
        }),
        window_seconds: rates.window.as_secs_f64(),
        settings,
    }
}

/// What a stage is called in a reason.
fn named(view: &StageView) -> String {
    match view.stage {
        "processor" => "processors".to_owned(),
        "batch_processor" => format!("batcher {}'s batch processors", view.batcher),
        other => other.to_owned(),
    }
}

/// The stage that limits throughput, with the reason in words.
fn bottleneck(paused: bool, stats: &Stats, rates: &Rates, stages: &[StageView]) -> Bottleneck {
    let of = |stage: &'static str, batcher: &str, reason: String| Bottleneck {
        stage,
        batcher: batcher.to_owned(),
        reason,
    };
    if paused {
        return of(
            "producer",
            "",
            "paused: nothing is fetched until it is resumed".to_owned(),
        );
    }
    if rates.window.is_zero() {
        return of("none", "", "measuring: figures after the first second".to_owned());
    }
    let full = stats.max_in_flight > 0 && stats.in_flight * 10 >= stats.max_in_flight * 9;
    // The busiest stage of the last ones first: a later stage that is busy makes every
    // earlier one wait.
    let busiest = stages.iter().filter(|s| s.busy_percent >= BUSY).max_by(|a, b| {
        (a.busy_percent.round(), order_of(a))
            .partial_cmp(&(b.busy_percent.round(), order_of(b)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if let Some(stage) = busiest {
        let mut reason = format!("{} {:.0}% busy", named(stage), stage.busy_percent);
        if stage.stage == "batch_processor" {
            reason.push_str(", processors waiting to hand their messages on");
        }
        if full {
            reason.push_str(&format!(
                "; {} of {} in flight, fetching waits for credits",
                stats.in_flight, stats.max_in_flight
            ));
        }
        return of(stage.stage, &stage.batcher, reason);
    }
    if rates.rate_limited_percent >= 50.0 {
        return of(
            "producer",
            "",
            format!(
                "the rate limit: fetching waited {:.0}% of the time",
                rates.rate_limited_percent
            ),
        );
    }
    if full {
        // Held without being handled: waiting for retries, or for acknowledgements.
        let holding = stages.iter().max_by_key(|s| s.in_flight);
        if let Some(stage) = holding.filter(|s| s.in_flight > 0) {
            return of(
                stage.stage,
                &stage.batcher,
                format!(
                    "{} of {} in flight, {} held by {} (retries or slow acknowledgements)",
                    stats.in_flight,
                    stats.max_in_flight,
                    stage.in_flight,
                    named(stage)
                ),
            );
        }
    }
    let producer = stages.iter().find(|s| s.stage == "producer");
    if let Some(producer) = producer.filter(|p| p.demand > 0) {
        return of(
            "producer",
            "",
            format!(
                "the source: {} messages asked for and not yet delivered (the broker, or an empty queue)",
                producer.demand
            ),
        );
    }
    of(
        "none",
        "",
        "keeping up: no stage is busy and nothing waits".to_owned(),
    )
}

fn order_of(view: &StageView) -> usize {
    STAGES.iter().position(|s| *s == view.stage).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(stage: &'static str, batcher: &str, busy: f64, in_flight: i64, demand: i64) -> StageView {
        StageView {
            stage,
            batcher: batcher.to_owned(),
            tasks: 1,
            demand,
            in_flight,
            busy_percent: busy,
            ..StageView::default()
        }
    }

    fn stats(in_flight: usize, max_in_flight: usize) -> Stats {
        Stats {
            in_flight,
            max_in_flight,
            ..Stats::default()
        }
    }

    fn measured() -> Rates {
        Rates {
            window: WINDOW,
            ..Rates::default()
        }
    }

    #[test]
    fn a_busy_batcher_is_the_bottleneck_and_says_who_waits() {
        let stages = [
            stage("producer", "", 0.0, 0, 0),
            stage("processor", "", 30.0, 10, 0),
            stage("batch_processor", "db", 99.0, 20, 0),
        ];
        let found = bottleneck(false, &stats(96, 100), &measured(), &stages);
        assert_eq!((found.stage, found.batcher.as_str()), ("batch_processor", "db"));
        assert_eq!(
            found.reason,
            "batcher db's batch processors 99% busy, processors waiting to hand their messages on; 96 of 100 in flight, fetching waits for credits"
        );
    }

    #[test]
    fn with_no_busy_stage_the_rate_limit_then_the_source_then_nothing() {
        let stages = [
            stage("producer", "", 0.0, 0, 64),
            stage("processor", "", 10.0, 0, 0),
        ];
        let mut limited = measured();
        limited.rate_limited_percent = 75.0;
        assert_eq!(
            bottleneck(false, &stats(0, 100), &limited, &stages).reason,
            "the rate limit: fetching waited 75% of the time"
        );
        assert!(bottleneck(false, &stats(0, 100), &measured(), &stages)
            .reason
            .starts_with("the source: 64 messages asked for"));
        let idle = [stage("producer", "", 0.0, 0, 0)];
        assert_eq!(
            bottleneck(false, &stats(0, 100), &measured(), &idle).stage,
            "none"
        );
        assert_eq!(
            bottleneck(true, &stats(0, 100), &measured(), &idle).reason,
            "paused: nothing is fetched until it is resumed"
        );
    }

    #[test]
    fn a_drain_estimate_is_what_waits_over_its_pace_between_readings_that_differ() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let first = Pace::next(None, 1_000, at(0));
        assert_eq!(first.drain_seconds(at(0)), None, "no pace from one reading");
        // The same reading again (the source refreshes it every few seconds) keeps the pace.
        let same = Pace::next(Some(first), 1_000, at(5));
        assert_eq!(same.at, at(0));
        let falling = Pace::next(Some(same), 700, at(15));
        assert_eq!(falling.per_second, 20.0);
        assert_eq!(falling.drain_seconds(at(15)), Some(35.0));
        let growing = Pace::next(Some(falling), 900, at(25));
        assert_eq!(
            growing.drain_seconds(at(25)),
            None,
            "a growing backlog has no drain time"
        );
        let stale = Pace::next(Some(growing), 800, at(30));
        assert_eq!(stale.drain_seconds(at(30)), Some(40.0));
        assert_eq!(
            stale.drain_seconds(at(100)),
            None,
            "a pace not seen to change for a minute is gone"
        );
    }

    #[test]
    fn a_quantile_is_the_bucket_holding_it_over_the_window() {
        let start = [(0.001, 10), (0.01, 10), (0.1, 10)];
        let end = [(0.001, 10), (0.01, 108), (0.1, 110)];
        assert_eq!(quantile(&start, &end, 0.5), Some(10.0));
        assert_eq!(quantile(&start, &end, 0.99), Some(100.0));
        assert_eq!(quantile(&end, &end, 0.5), None);
    }
}
