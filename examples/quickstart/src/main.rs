//! Run with `cargo run -p quickstart`.
//!
//! The smallest longshore service: an in-memory source of orders, a processor pool that
//! validates each one, and a batcher that "writes" them in batches of 100 to a simulated
//! slow sink. No broker needed. It prints a progress line each second and a summary, and
//! ends by itself once every order is acknowledged (about three seconds by default), or
//! drains and stops on ctrl-c. Its metrics are on http://localhost:9464/metrics while it
//! runs (`--metrics-addr` to move them). It starts like every longshore service:
//! `--config`, `--metrics-addr`, `--log-format` (see `longshore::service`).

use std::time::{Duration, Instant};

use clap::Parser;
use longshore::service::{ServiceArgs, ServiceConfig};
use longshore::source::memory::MemorySource;
use longshore::{BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors};

/// An in-memory longshore pipeline: validate orders, write them in batches.
#[derive(Debug, Parser)]
struct Args {
    /// How many orders to generate.
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    /// How many processors validate orders.
    #[arg(long, default_value_t = 4)]
    processors: usize,
    /// How many batches are written at once.
    #[arg(long, default_value_t = 4)]
    batch_concurrency: usize,
    /// Orders per batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// How long the simulated sink takes to write one batch, in milliseconds.
    #[arg(long, default_value_t = 5)]
    sink_latency_ms: u64,
    /// The flags of every longshore service: --config (whose `[pipeline]` section then
    /// replaces the flags above), --metrics-addr, --log-format.
    #[command(flatten)]
    service: ServiceArgs,
}

/// The settings of a source that has none.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

impl longshore::source::SourceSettings for Empty {}

/// One order, as a producer would have put it on a queue.
#[derive(Debug)]
struct Order {
    id: u64,
    amount_cents: i64,
}

/// Validates orders, routes them by region, writes them in batches.
#[derive(Debug)]
struct Orders {
    sink_latency: Duration,
}

impl Handler for Orders {
    type Item = Order;
    type Metadata = ();

    async fn handle_message(&self, message: &mut Message<Order>) -> Result<(), BoxError> {
        let order = message.data();
        if order.amount_cents <= 0 {
            return Err(format!("order {} has a non-positive amount", order.id).into());
        }
        let region = if order.id.is_multiple_of(3) { "eu" } else { "us" };
        message.put_batch_key(region);
        Ok(())
    }

    async fn handle_batch(&self, _batch: &mut [Message<Order>], _info: &BatchInfo) -> Result<(), BoxError> {
        // Stands in for one INSERT of the whole batch into a database.
        tokio::time::sleep(self.sink_latency).await;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    longshore::service::exit(run().await)
}

async fn run() -> Result<(), BoxError> {
    let args = Args::parse();
    // The in-memory source has no settings: its section stays empty.
    let config: ServiceConfig<Empty> = args.service.load()?;
    args.service.init_logging(&config);
    let metrics = config.serve_metrics().await?;
    println!("metrics on http://{}/metrics", metrics.local_addr());
    // One order in a thousand is invalid, to show the failure path.
    let orders = (0..args.count).map(|id| Order {
        id,
        amount_cents: if id % 1000 == 999 {
            0
        } else {
            1 + (id % 10_000) as i64
        },
    });
    let handler = Orders {
        sink_latency: Duration::from_millis(args.sink_latency_ms),
    };
    let builder = Pipeline::builder(MemorySource::from_iter(orders), handler);
    let builder = match args.service.config {
        Some(_) => builder.config(config.pipeline),
        None => builder
            .name("quickstart")
            .processors(Processors::new(args.processors))
            .batcher(
                Batcher::new("db")
                    .batch_size(args.batch_size)
                    .batch_timeout(Duration::from_millis(200))
                    .concurrency(args.batch_concurrency),
            ),
    };
    let pipeline = builder.start()?;
    metrics.add_pipeline(pipeline.control());

    let stats = pipeline.stats();
    let started = Instant::now();
    let progress = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = 0;
        loop {
            tick.tick().await;
            let now = stats.get();
            let acked = now.successful + now.failed;
            println!(
                "{:>4.1}s  rate {:>9} msg/s  in-flight {:>5}/{}  acked {:>9} ({} failed)",
                started.elapsed().as_secs_f64(),
                acked - last,
                now.in_flight,
                now.max_in_flight,
                acked,
                now.failed,
            );
            last = acked;
        }
    });

    let summary = pipeline.run_until_signal().await?;
    progress.abort();
    metrics.shutdown().await;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "done in {elapsed:.2}s: received {}, acknowledged {} successful and {} failed ({:.0} msg/s)",
        summary.received,
        summary.successful,
        summary.failed,
        (summary.successful + summary.failed) as f64 / elapsed,
    );
    Ok(())
}
