//! What OpenTelemetry tracing costs: the core batcher case (one producer, 2 processors,
//! batches of 100 over 2 batch processors, a do-nothing handler) with tracing off, against
//! the same pipeline making a span per message and per batch, each in a process of its
//! own, in alternated rounds.
//!
//! Cases: `off` (no tracer given: the default), `unsampled` (a tracer whose sampler drops
//! every trace: spans made, not recorded) and `on` (every span recorded and handed to a
//! batch exporter that drops them, so the figure is the pipeline's cost, not a
//! collector's). Prints `BENCH case=tracing ratio_unsampled=<x> ratio_on=<x> ...`, each
//! ratio the median over the rounds of that case's rate over `off`'s; under `cargo test`
//! a short smoke run. For instruction counts, run one case under callgrind:
//! `LONGSHORE_BENCH_MESSAGES=200000 valgrind --tool=callgrind target/release/deps/tracing-* --case off`.

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Instant;

use longshore::source::memory::MemorySource;
use longshore::trace::Tracing;
use longshore::{Batcher, Pipeline, Processors};
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};

/// Takes every batch of spans and drops it.
#[derive(Debug)]
struct Drop;

impl SpanExporter for Drop {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

const CASES: [&str; 3] = ["off", "unsampled", "on"];

/// Runs the pipeline over `messages`; messages per second.
fn run_case(case: &str, messages: u64) -> f64 {
    let provider = match case {
        "off" => None,
        "unsampled" => Some(
            SdkTracerProvider::builder()
                .with_sampler(Sampler::AlwaysOff)
                .build(),
        ),
        "on" => Some(SdkTracerProvider::builder().with_batch_exporter(Drop).build()),
        other => panic!("no case {other}"),
    };
    let runtime = support::runtime();
    let elapsed = runtime.block_on(async {
        let source = MemorySource::from_iter(0..messages);
        let started = Instant::now();
        let mut builder = Pipeline::builder(source, support::Sink)
            .processors(Processors::new(2))
            .batcher(Batcher::new("bench").batch_size(100).concurrency(2));
        if let Some(provider) = &provider {
            builder = builder.tracing(Tracing::new(provider.tracer("bench")));
        }
        builder.start().unwrap().wait().await.unwrap();
        started.elapsed()
    });
    if let Some(provider) = provider {
        // The spans dropped when the processor's queue was full are not the figure; a
        // flush that times out behind them is no failure of the case.
        let _ = provider.shutdown();
    }
    messages as f64 / elapsed.as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (messages, rounds) = support::size(&args, 2_000_000);
    if let Some(at) = args.iter().position(|a| a == "--case") {
        support::report(&[run_case(&args[at + 1], messages)]);
        return;
    }
    let mut rates = vec![Vec::new(); CASES.len()];
    let mut ratios = vec![Vec::new(); CASES.len()];
    for round in 0..rounds {
        let mut this = [0.0; CASES.len()];
        for turn in 0..CASES.len() {
            let at = (turn + round) % CASES.len();
            let env = [("LONGSHORE_BENCH_MESSAGES", messages.to_string())];
            this[at] = support::run_child(&["--case", CASES[at]], &env)[0];
            rates[at].push(this[at]);
        }
        for at in 1..CASES.len() {
            ratios[at].push(this[at] / this[0]);
        }
    }
    let range = |values: &[f64]| {
        let (min, max) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        format!("{min:.3}-{max:.3}")
    };
    println!(
        "BENCH case=tracing ratio_unsampled={:.3} ratio_unsampled_range={} ratio_on={:.3} ratio_on_range={} \
         msgs_per_s={:.0} unsampled_msgs_per_s={:.0} on_msgs_per_s={:.0} rounds={rounds} messages={messages}",
        support::median(ratios[1].clone()),
        range(&ratios[1]),
        support::median(ratios[2].clone()),
        range(&ratios[2]),
        support::median(rates[0].clone()),
        support::median(rates[1].clone()),
        support::median(rates[2].clone()),
    );
}
