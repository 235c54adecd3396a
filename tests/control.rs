//! Changing a running pipeline: paused, nothing is fetched and what it holds finishes;
//! resumed, it goes on to the end; its stages resized, and its batchers retuned, it loses
//! nothing; each change is recorded. On paused time, so that waits are exact.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use longshore::source::memory::{AckCounts, MemorySource};
use longshore::{BoxError, Handler, Message, Pipeline, Processors, RateLimit, Source};

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

/// 10 ms a message; batches at once.
struct Slow;

impl Handler for Slow {
    type Item = usize;
    type Metadata = ();

    async fn handle_message(&self, _: &mut Message<usize>) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    }

    async fn handle_batch(&self, _: &mut [Message<usize>], _: &longshore::BatchInfo) -> Result<(), BoxError> {
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
    assert_eq!(value("longshore_paused", &["control-test"]), Some(1.0));

    switch.resume();
    let summary = pipeline.wait().await.unwrap();
    assert_eq!((summary.received, summary.successful), (2_000, 2_000));
}

/// A pipeline of one processor on `source`, caught up (its producer waiting in the
/// source's receive for messages to come), then paused, then sent `sent` messages.
async fn paused_while_waiting<S>(
    source: S,
    sender: &tokio::sync::mpsc::Sender<usize>,
    sent: usize,
) -> Pipeline
where
    S: Source<Data = usize, Metadata = ()>,
{
    let pipeline = Pipeline::builder(source, Slow)
        .processors(Processors::new(1).max_demand(10))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    pipeline.pause_switch().pause();
    for i in 0..sent {
        sender.send(i).await.unwrap();
    }
    pipeline
}

#[tokio::test(start_paused = true)]
async fn a_pause_while_the_source_waits_for_messages_fetches_nothing() {
    let (source, sender) = MemorySource::channel(100);
    let pipeline = paused_while_waiting(source, &sender, 5).await;
    let (stats, switch) = (pipeline.stats(), pipeline.pause_switch());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(stats.get().received, 0, "fetched while paused");

    switch.resume();
    drop(sender);
    let summary = pipeline.wait().await.unwrap();
    assert_eq!((summary.received, summary.successful), (5, 5));
}

/// A source whose fetch under way leases what it brings (as SQS's long poll does).
struct Leasing(MemorySource<usize>);

impl Source for Leasing {
    type Data = usize;
    type Metadata = ();
    type Acknowledger = AckCounts;

    fn acknowledger(&self) -> AckCounts {
        self.0.acknowledger()
    }

    fn drops_fetch_on_pause(&self) -> bool {
        false
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<usize>>>, BoxError> {
        self.0.receive(demand).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_pause_lets_a_leasing_sources_fetch_under_way_complete_and_fetches_no_more() {
    let (source, sender) = MemorySource::channel(100);
    let pipeline = paused_while_waiting(Leasing(source), &sender, 3).await;
    let (stats, switch) = (pipeline.stats(), pipeline.pause_switch());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The fetch under way brought them and they were handled, not held for the pause.
    assert_eq!((stats.get().received, stats.get().successful), (3, 3));
    for i in 3..6 {
        sender.send(i).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(stats.get().received, 3, "no fetch after the one under way");

    switch.resume();
    drop(sender);
    let summary = pipeline.wait().await.unwrap();
    assert_eq!((summary.received, summary.successful), (6, 6));
}

#[tokio::test(start_paused = true)]
async fn a_pause_while_a_fetch_waits_for_the_rate_limit_fetches_nothing() {
    let receives = Arc::new(AtomicUsize::new(0));
    let source = Counted {
        inner: MemorySource::from_iter(0..10),
        receives: receives.clone(),
    };
    let pipeline = Pipeline::builder(source, Slow)
        .name("control-pause-limited")
        .processors(Processors::new(1).max_demand(1))
        .rate_limit(RateLimit::new(1, Duration::from_secs(60)).burst(1))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    // The first message passes at once; the next fetch waits a minute for the limit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((stats.get().received, receives.load(Ordering::SeqCst)), (1, 1));
    pipeline.pause_switch().pause();
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        (stats.get().received, receives.load(Ordering::SeqCst)),
        (1, 1),
        "fetched while paused, once the limit let it"
    );
    pipeline.pause_switch().resume();
    pipeline.rate_limits().set(None).unwrap();
    let summary = pipeline.wait().await.unwrap();
    assert_eq!(summary.successful, 10);
}

/// The value of the series of `family` whose label values include all of `labels`.
fn value(family: &str, labels: &[&str]) -> Option<f64> {
    let family = longshore::metrics::registry()
        .gather()
        .into_iter()
        .find(|f| f.name() == family)?;
    let metric = family.get_metric().iter().find(|m| {
        labels
            .iter()
            .all(|want| m.get_label().iter().any(|l| l.value() == *want))
    })?;
    Some(match family.get_field_type() {
        prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
        _ => metric.get_gauge().get_value(),
    })
}

/// Waits (on paused time) until the stage of `labels` runs `tasks` tasks.
async fn tasks_become(labels: &[&str], tasks: f64) {
    let mut waited = Duration::ZERO;
    while value("longshore_stage_tasks", labels) != Some(tasks) {
        assert!(
            waited < Duration::from_secs(10),
            "{labels:?} ran {:?} tasks, not {tasks}",
            value("longshore_stage_tasks", labels)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        waited += Duration::from_millis(1);
    }
}

#[tokio::test(start_paused = true)]
async fn processors_and_batch_processors_resize_while_it_runs_and_each_change_is_recorded() {
    let pipeline = Pipeline::builder(MemorySource::from_iter(0..3_000), Slow)
        .name("scaling-test")
        .processors(Processors::new(4).max_demand(10))
        .batcher(longshore::Batcher::new("db").concurrency(2))
        .start()
        .unwrap();
    let scaling = pipeline.scaling();
    let processors = ["scaling-test", "processor"];
    let batch_processors = ["scaling-test", "batch_processor", "db"];
    tasks_become(&processors, 4.0).await;
    tasks_become(&batch_processors, 2.0).await;

    scaling.set_processors(1).unwrap();
    // The three retired finish their chunk, then end.
    tasks_become(&processors, 1.0).await;
    scaling.set_processors(6).unwrap();
    tasks_become(&processors, 6.0).await;
    scaling.set_batch_concurrency("db", 3).unwrap();
    tasks_become(&batch_processors, 3.0).await;
    assert_eq!(
        (scaling.processors(), scaling.batch_concurrency("db")),
        (6, Some(3))
    );
    assert_eq!(
        scaling
            .set_processors(longshore::MAX_TASKS + 1)
            .unwrap_err()
            .to_string(),
        format!(
            "invalid processors.concurrency: must be at most {}, got {}",
            longshore::MAX_TASKS,
            longshore::MAX_TASKS + 1
        )
    );
    assert_eq!(
        scaling.set_batch_concurrency("nope", 1).unwrap_err().to_string(),
        "invalid batchers.nope.concurrency: no batcher of that name"
    );
    // Setting what is already set changes nothing, and records nothing.
    scaling.set_processors(6).unwrap();

    let changes: Vec<_> = pipeline
        .changes()
        .into_iter()
        .map(|c| (c.setting, c.from, c.to))
        .collect();
    let change = |setting: &str, from: &str, to: &str| (setting.to_owned(), from.to_owned(), to.to_owned());
    assert_eq!(
        changes,
        [
            change("processors.concurrency", "4", "1"),
            change("processors.concurrency", "1", "6"),
            change("batchers.db.concurrency", "2", "3"),
        ]
    );
    assert_eq!(
        value(
            "longshore_control_changes_total",
            &["scaling-test", "processors.concurrency"]
        ),
        Some(2.0)
    );
    let summary = pipeline.wait().await.unwrap();
    assert_eq!((summary.received, summary.successful), (3_000, 3_000));
    // Every task ended with the pipeline.
    assert_eq!(value("longshore_stage_tasks", &processors), Some(0.0));
    assert_eq!(value("longshore_stage_tasks", &batch_processors), Some(0.0));
}

/// Records each batch's size and trigger.
#[derive(Default)]
struct Batches(std::sync::Mutex<Vec<(usize, longshore::BatchTrigger)>>);

impl Handler for Batches {
    type Item = usize;
    type Metadata = ();

    async fn handle_message(&self, _: &mut Message<usize>) -> Result<(), BoxError> {
        Ok(())
    }

    async fn handle_batch(
        &self,
        batch: &mut [Message<usize>],
        info: &longshore::BatchInfo,
    ) -> Result<(), BoxError> {
        self.0.lock().unwrap().push((batch.len(), info.trigger));
        Ok(())
    }
}

/// A pipeline fed from a channel into batcher `db`, recording its batches.
fn batching_pipeline(
    size: usize,
    timeout: Duration,
) -> (Pipeline, tokio::sync::mpsc::Sender<usize>, Arc<Batches>) {
    let (source, sender) = MemorySource::channel(1_000);
    let batches = Arc::new(Batches::default());
    let pipeline = Pipeline::builder(source, batches.clone())
        .processors(Processors::new(1).max_demand(100))
        .batcher(
            longshore::Batcher::new("db")
                .batch_size(size)
                .batch_timeout(timeout),
        )
        .start()
        .unwrap();
    (pipeline, sender, batches)
}

#[tokio::test(start_paused = true)]
async fn a_batchers_size_and_timeout_change_while_it_runs() {
    use longshore::BatchTrigger::{Size, Timeout};

    let (pipeline, sender, batches) = batching_pipeline(100, Duration::from_secs(60));
    let batching = pipeline.batching();
    let send = |n: usize| {
        let sender = sender.clone();
        async move {
            for i in 0..n {
                sender.send(i).await.unwrap();
            }
        }
    };
    let settle = || tokio::time::sleep(Duration::from_millis(100));

    send(100).await;
    settle().await;
    batching.set_batch_size("db", 10).unwrap();
    send(30).await;
    settle().await;
    batching.set_batch_size("db", 1_000).unwrap();
    batching
        .set_batch_timeout("db", Duration::from_millis(500))
        .unwrap();
    send(5).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        *batches.0.lock().unwrap(),
        [(100, Size), (10, Size), (10, Size), (10, Size), (5, Timeout)]
    );
    assert_eq!(
        (batching.batch_size("db"), batching.batch_timeout("db")),
        (Some(1_000), Some(Duration::from_millis(500)))
    );
    assert!(batching.set_batch_size("nope", 1).is_err());
    drop(sender);
    pipeline.wait().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lowered_size_or_timeout_applies_to_the_batches_already_open() {
    use longshore::BatchTrigger::{Size, Timeout};

    let (pipeline, sender, batches) = batching_pipeline(1_000, Duration::from_secs(900));
    let batching = pipeline.batching();
    // 25 open under a size of 1,000: cut into batches of the new size at once, in order.
    for i in 0..25 {
        sender.send(i).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(batches.0.lock().unwrap().is_empty());
    batching.set_batch_size("db", 10).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(*batches.0.lock().unwrap(), [(10, Size), (10, Size)]);
    // The 5 left, opened under an hour's timeout, go within the new second.
    batching.set_batch_timeout("db", Duration::from_secs(1)).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(*batches.0.lock().unwrap(), [(10, Size), (10, Size), (5, Timeout)]);
    drop(sender);
    pipeline.wait().await.unwrap();
}

/// Keyed batches: item 0 alone under key 0, whose first attempt fails (a minute's
/// backoff); the others under keys 1 to 3, 10 ms a message. Records each successful
/// batch's items, in the order handled.
#[derive(Default)]
struct KeyedRetry {
    handled: std::sync::Mutex<Vec<(u64, usize)>>,
    first_failed: tokio::sync::Notify,
    tried: AtomicUsize,
}

fn key_of(item: usize) -> u64 {
    if item == 0 {
        0
    } else {
        1 + item as u64 % 3
    }
}

impl Handler for KeyedRetry {
    type Item = usize;
    type Metadata = ();

    async fn handle_message(&self, message: &mut Message<usize>) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        message.put_batch_key(key_of(*message.data()));
        Ok(())
    }

    async fn handle_batch(
        &self,
        batch: &mut [Message<usize>],
        _: &longshore::BatchInfo,
    ) -> Result<(), BoxError> {
        if *batch[0].data() == 0 && self.tried.fetch_add(1, Ordering::SeqCst) == 0 {
            self.first_failed.notify_one();
            return Err("key 0 fails once".into());
        }
        let mut handled = self.handled.lock().unwrap();
        handled.extend(batch.iter().map(|m| (key_of(*m.data()), *m.data())));
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn an_ordered_batcher_resizes_while_one_key_waits_out_a_retry_and_the_others_flow_on() {
    let handler = Arc::new(KeyedRetry::default());
    let pipeline = Pipeline::builder(MemorySource::from_iter(0..600), handler.clone())
        .name("ordered-resize")
        .processors(Processors::new(2).max_demand(5))
        .partition_by(|m: &Message<usize>| key_of(*m.data()))
        .batcher(
            longshore::Batcher::new("db")
                .batch_size(5)
                .batch_timeout(Duration::from_millis(5))
                .concurrency(2),
        )
        .retry(
            longshore::RetryPolicy::new(2)
                .initial_backoff(Duration::from_secs(60))
                .max_backoff(Duration::from_secs(60))
                .jitter(0.0),
        )
        .start()
        .unwrap();
    let batch_processors = ["ordered-resize", "batch_processor", "db"];
    let handled = || handler.handled.lock().unwrap().len();
    handler.first_failed.notified().await;
    let retry_due = tokio::time::Instant::now() + Duration::from_secs(60);

    // Grown while key 0 waits: the new batch processor starts at once, and the other
    // keys go on being handled.
    let scaling = pipeline.scaling();
    scaling.set_batch_concurrency("db", 3).unwrap();
    tasks_become(&batch_processors, 3.0).await;
    let before = handled();
    while handled() < before + 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Shrunk to one: the others finish what they hold and end, but the one holding key 0
    // runs until its retry is done.
    scaling.set_batch_concurrency("db", 1).unwrap();
    while handled() < 599 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while value("longshore_stage_tasks", &batch_processors) > Some(2.0) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        tokio::time::Instant::now() < retry_due,
        "the other keys waited for key 0's retry"
    );

    let summary = pipeline.wait().await.unwrap();
    assert_eq!((summary.received, summary.successful), (600, 600));
    assert_eq!(value("longshore_stage_tasks", &batch_processors), Some(0.0));
    // Each key's items were handled once each, in order, through both resizes.
    let handled = handler.handled.lock().unwrap();
    for key in 0..4 {
        let items: Vec<usize> = handled
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, i)| *i)
            .collect();
        let expected: Vec<usize> = (0..600).filter(|i| key_of(*i) == key).collect();
        assert_eq!(items, expected, "key {key}");
    }
}
