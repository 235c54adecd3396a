//! Run with `cargo run -p csv-import`.
//!
//! A CSV file of payments read by a slower process, with no broker: the file source
//! reads rows only as the pipeline asks for them, each row is decoded by the file's
//! header, and a simulated slow sink writes them in batches of 100. Stop it with ctrl-c
//! (or kill it) and start it again: it resumes after the last row acknowledged with
//! every row before it (the checkpoint beside the file). With no file given it writes a
//! sample of 50,000 rows to `target/payments.csv` first.
//!
//! ```toml
//! [pipeline]
//! name = "csv-import"
//! processors = { concurrency = 4 }
//! batchers = [{ name = "ledger", batch_size = 100, batch_timeout = "200ms", concurrency = 4 }]
//!
//! [source]
//! path = "/data/payments.csv"
//! format = "csv"
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use longshore::service::{ServiceArgs, ServiceConfig};
use longshore::{BatchInfo, Batcher, BoxError, Handler, Pipeline, Processors};
use longshore_file::{Csv, FileConfig, FileMessage, FileMetadata, FileSource, Format};

/// Imports a CSV file of payments into a (simulated) slow ledger.
#[derive(Debug, Parser)]
struct Args {
    /// The CSV file (without --config); a sample is written there if it does not exist.
    #[arg(long, default_value = "target/payments.csv")]
    file: PathBuf,
    /// Rows of the sample written when the file does not exist.
    #[arg(long, default_value_t = 50_000)]
    sample_rows: u64,
    /// How long the simulated ledger takes to write one batch, in milliseconds.
    #[arg(long, default_value_t = 5)]
    sink_latency_ms: u64,
    /// The flags of every longshore service: --config (whose `[pipeline]` and `[source]`
    /// sections then replace the flags above), --metrics-addr, --log-format.
    #[command(flatten)]
    service: ServiceArgs,
}

/// One row of the file, by its header's names.
#[derive(Debug, serde::Deserialize)]
struct Payment {
    id: u64,
    account: String,
    amount_cents: i64,
}

struct Ledger {
    sink_latency: Duration,
}

impl Handler for Ledger {
    type Item = Payment;
    type Metadata = FileMetadata;

    async fn handle_message(&self, message: &mut FileMessage<Payment>) -> Result<(), BoxError> {
        let payment = message.data();
        if payment.amount_cents == 0 {
            // Failed for good: logged with its file and line, and acknowledged.
            return Err(format!("payment {} to {} is of nothing", payment.id, payment.account).into());
        }
        Ok(())
    }

    async fn handle_batch(
        &self,
        _batch: &mut [FileMessage<Payment>],
        _info: &BatchInfo,
    ) -> Result<(), BoxError> {
        // Stands in for one INSERT of the whole batch.
        tokio::time::sleep(self.sink_latency).await;
        Ok(())
    }
}

/// Writes `rows` sample payments to `path`, one in a thousand of nothing.
fn write_sample(path: &PathBuf, rows: u64) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(file, "id,account,amount_cents")?;
    for id in 1..=rows {
        let cents = if id % 1000 == 0 {
            0
        } else {
            (id * 37) % 100_000 + 1
        };
        writeln!(file, "{id},\"acct-{:04}\",{cents}", id % 500)?;
    }
    file.flush()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    longshore::service::exit(run().await)
}

async fn run() -> Result<(), BoxError> {
    let args = Args::parse();
    let config: ServiceConfig<FileConfig> = args.service.load()?;
    args.service.init_logging(&config);
    let source_config = match args.service.config {
        Some(_) => config.source.clone(),
        None => {
            if !args.file.exists() {
                write_sample(&args.file, args.sample_rows)?;
                println!(
                    "wrote {} sample rows to {}",
                    args.sample_rows,
                    args.file.display()
                );
            }
            FileConfig::new(&args.file).format(Format::Csv)
        }
    };
    let metrics = config.serve_metrics().await?;
    println!("metrics on http://{}/metrics", metrics.local_addr());
    let source = FileSource::open(source_config).await?;
    println!(
        "reading {}, checkpoint {}",
        args.file.display(),
        source.checkpoint_path().display()
    );
    let handler = Ledger {
        sink_latency: Duration::from_millis(args.sink_latency_ms),
    };
    let builder = Pipeline::builder(source, handler).decode(Csv::new());
    let builder = match args.service.config {
        Some(_) => builder.config(config.pipeline),
        None => builder.name("csv-import").processors(Processors::new(4)).batcher(
            Batcher::new("ledger")
                .batch_size(100)
                .batch_timeout(Duration::from_millis(200))
                .concurrency(4),
        ),
    };
    let pipeline = builder.start()?;
    metrics.add_pipeline(pipeline.control());
    let started = Instant::now();
    let summary = pipeline.run_until_signal().await?;
    metrics.shutdown().await;
    println!(
        "done in {:.2}s: {} rows, {} imported, {} failed; run again to resume after the last row acknowledged",
        started.elapsed().as_secs_f64(),
        summary.received,
        summary.successful,
        summary.failed,
    );
    Ok(())
}
