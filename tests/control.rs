//! Pausing a running pipeline: nothing is fetched while it is paused and what it holds
//! finishes; resumed, it goes on to the end. On paused time, so that waits are exact.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use longshore::source::memory::{AckCounts, MemorySource};
use longshore::{BoxError, Handler, Message, Pipeline, Processors, Source};

/// The in-memory source, counting its receive calls.
struct Counted {
    inner: MemorySource<usize>,
    receives: Arc<AtomicUsize>,
}

impl Source for Counted {
    type Data = usize;
    type Metadata = ();
    type Acknowledger = AckCounts;

    fn acknowledger(&self) -> AckCounts {
        self.inner.acknowledger()
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<usize>>>, BoxError> {
        self.receives.fetch_add(1, Ordering::SeqCst);
        self.inner.receive(demand).await
    }
}

/// 10 ms a message.
struct Slow;

impl Handler for Slow {
    type Item = usize;
    type Metadata = ();

    async fn handle_message(&self, _: &mut Message<usize>) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_paused_pipeline_fetches_nothing_and_finishes_what_it_holds_then_resumes() {
    let receives = Arc::new(AtomicUsize::new(0));
    let source = Counted {
        inner: MemorySource::from_iter(0..2_000),
        receives: receives.clone(),
    };
    let pipeline = Pipeline::builder(source, Slow)
        .name("control-test")
        .processors(Processors::new(2).max_demand(10))
        .start()
        .unwrap();
    let (stats, switch) = (pipeline.stats(), pipeline.pause_switch());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(stats.get().received > 0);

    switch.pause();
    assert!(switch.is_paused());
    // What it holds drains to nothing.
    let mut waited = Duration::ZERO;
    while stats.get().in_flight > 0 {
        assert!(
            waited < Duration::from_secs(10),
            "in flight stayed {}",
            stats.get().in_flight
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    let (received, asked) = (stats.get().received, receives.load(Ordering::SeqCst));
    assert!(received < 2_000, "paused before the end");
    // Nothing is asked of the source however long it stays paused.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        (stats.get().received, receives.load(Ordering::SeqCst)),
        (received, asked)
    );
    let paused = longshore::metrics::registry()
        .gather()
        .into_iter()
        .find(|family| family.name() == "longshore_paused")
        .and_then(|family| {
            let metric = family
                .get_metric()
                .iter()
                .find(|m| m.get_label().iter().any(|l| l.value() == "control-test"))?;
            Some(metric.get_gauge().get_value())
        });
    assert_eq!(paused, Some(1.0));

    switch.resume();
    let summary = pipeline.wait().await.unwrap();
    assert_eq!((summary.received, summary.successful), (2_000, 2_000));
}
