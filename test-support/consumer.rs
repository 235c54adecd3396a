//! What the chaos tests' consumer processes share: a slow sink on request, and their
//! reports (the in-flight bound on stdout, progress on stderr). Included by each
//! connector's consumer binary (`#[path]`), not a crate.

#![allow(dead_code, unreachable_pub)] // each consumer binary uses its own part

use std::time::Duration;

use longshore::Pipeline;

/// A slow sink: each batch waits this long (`LONGSHORE_CHAOS_SINK_MS`, default 0).
pub fn sink_latency() -> Duration {
    let millis = std::env::var("LONGSHORE_CHAOS_SINK_MS")
        .ok()
        .and_then(|ms| ms.parse().ok());
    Duration::from_millis(millis.unwrap_or(0))
}

/// Receives at once (`LONGSHORE_CHAOS_PRODUCERS`, default 1).
pub fn producers() -> usize {
    std::env::var("LONGSHORE_CHAOS_PRODUCERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Prints `max_in_flight=<n>` for the test, then the pipeline's counts every 500 ms on
/// stderr (the log beside the output).
pub fn report(pipeline: &Pipeline) {
    println!("max_in_flight={}", pipeline.stats().get().max_in_flight);
    let stats = pipeline.stats();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            eprintln!("{:?}", stats.get());
        }
    });
}

/// The consumer processes' handler for sources whose data is the payload: appends each
/// handled payload's id (`id`, or the `id` of `id,key`), one per line, to the output
/// file, one `write` per batch so that a kill never leaves half a batch.
pub struct AppendIds<M> {
    file: std::sync::Mutex<std::fs::File>,
    sink_latency: Duration,
    metadata: std::marker::PhantomData<fn() -> M>,
}

impl<M> AppendIds<M> {
    /// Appends to `output`, with the sink latency of `LONGSHORE_CHAOS_SINK_MS`.
    pub fn open(output: &str) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(output)?;
        Ok(AppendIds {
            file: std::sync::Mutex::new(file),
            sink_latency: sink_latency(),
            metadata: std::marker::PhantomData,
        })
    }
}

impl<M: Send + Sync + 'static> longshore::Handler for AppendIds<M> {
    type Item = bytes::Bytes;
    type Metadata = M;

    async fn handle_message(
        &self,
        _: &mut longshore::Message<bytes::Bytes, M>,
    ) -> Result<(), longshore::BoxError> {
        Ok(())
    }

    async fn handle_batch(
        &self,
        batch: &mut [longshore::Message<bytes::Bytes, M>],
        _: &longshore::BatchInfo,
    ) -> Result<(), longshore::BoxError> {
        let mut lines = Vec::with_capacity(batch.len() * 8);
        for message in batch.iter() {
            let id = message.data().split(|&b| b == b',').next().unwrap_or_default();
            lines.extend_from_slice(id);
            lines.push(b'\n');
        }
        tokio::time::sleep(self.sink_latency).await;
        std::io::Write::write_all(&mut *self.file.lock().unwrap(), &lines)?;
        Ok(())
    }
}

/// Runs the consumer processes' pipeline over `source` until SIGTERM: 4 processors of
/// `max_demand` 20, batches of 50 (20 ms) into `AppendIds`, 3 attempts, a 10 s deadline,
/// `LONGSHORE_CHAOS_PRODUCERS` receives at once (default 1).
pub async fn run_until_signal<S>(source: S, output: &str) -> Result<(), longshore::BoxError>
where
    S: longshore::Source<Data = bytes::Bytes>,
    S::Metadata: Send + Sync + 'static,
{
    let pipeline = Pipeline::builder(source, AppendIds::<S::Metadata>::open(output)?)
        .processors(longshore::Processors::new(4).max_demand(20))
        .source_concurrency(producers())
        .batcher(
            longshore::Batcher::new("file")
                .batch_size(50)
                .batch_timeout(Duration::from_millis(20)),
        )
        .retry(longshore::RetryPolicy::new(3).initial_backoff(Duration::from_millis(200)))
        .shutdown_deadline(Duration::from_secs(10))
        .start()?;
    report(&pipeline);
    pipeline.run_until_signal().await?;
    Ok(())
}
