//! The failure path, on paused time so that every delay is exact: retries and their
//! backoff, permanent errors, dead letters, key order under retries, batch retries,
//! broker redelivery, rate limits.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longshore::source::memory::MemorySource;
use longshore::source::Redelivery;
use longshore::testing::TestSource;
use longshore::{
    Acknowledger, BatchInfo, BatchTrigger, Batcher, BoxError, DeadLetter, Handler, Message, Permanent,
    Pipeline, Processors, RateLimit, RetryAfter, RetryPolicy, Source,
};
use tokio::time::Instant;

/// What a test handler does on each call, by the message's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ok,
    /// Fails attempts 1..=n, then succeeds.
    Flaky(u32),
    AlwaysFails,
    Permanent,
    /// Fails attempt 1 asking for its own delay.
    RetryAfter(Duration),
}

#[derive(Debug, Clone)]
struct Job {
    id: u32,
    key: u64,
    fate: Fate,
}

fn job(id: u32, key: u64, fate: Fate) -> Job {
    Job { id, key, fate }
}

/// Records every call: which job, which attempt, when.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(u32, u32, Instant)>>,
    failed: Mutex<Vec<u32>>,
    started: Mutex<Option<Instant>>,
}

impl Recorder {
    fn since_start(&self, at: Instant) -> Duration {
        at - self.started.lock().unwrap().expect("started")
    }

    fn calls_of(&self, id: u32) -> Vec<(u32, Duration)> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(job, _, _)| *job == id)
            .map(|&(_, attempt, at)| (attempt, self.since_start(at)))
            .collect()
    }
}

impl Handler for Recorder {
    type Item = Job;
    type Metadata = Job;

    async fn handle_message(&self, message: &mut Message<Job, Job>) -> Result<(), BoxError> {
        let job = message.data().clone();
        let attempt = message.attempt();
        self.calls.lock().unwrap().push((job.id, attempt, Instant::now()));
        match job.fate {
            Fate::Ok => Ok(()),
            Fate::Flaky(n) if attempt <= n => Err(format!("flaky attempt {attempt}").into()),
            Fate::Flaky(_) => Ok(()),
            Fate::AlwaysFails => Err("always".into()),
            Fate::Permanent => Err(Permanent::new("malformed").into()),
            Fate::RetryAfter(delay) if attempt == 1 => Err(RetryAfter::new("busy", delay).into()),
            Fate::RetryAfter(_) => Ok(()),
        }
    }

    async fn handle_failed(&self, messages: &mut [Message<Job, Job>]) {
        self.failed
            .lock()
            .unwrap()
            .extend(messages.iter().map(|m| m.data().id));
    }
}

/// A dead-letter destination whose first `fail_first` writes fail.
#[derive(Default)]
struct Graveyard {
    fail_first: AtomicUsize,
    writes: AtomicUsize,
    graves: Mutex<Vec<(u32, u32, String)>>,
}

impl DeadLetter<Job> for Graveyard {
    async fn dead_letter(&self, messages: &mut [Message<(), Job>]) -> Result<(), BoxError> {
        let write = self.writes.fetch_add(1, Ordering::SeqCst);
        if write < self.fail_first.load(Ordering::SeqCst) {
            return Err("dead-letter queue unavailable".into());
        }
        let mut graves = self.graves.lock().unwrap();
        for m in messages.iter() {
            graves.push((m.metadata().id, m.attempt(), m.status().to_string()));
        }
        Ok(())
    }
}

/// Each job as a message whose metadata is the job too, as a source's would tell it: what
/// the acknowledger and the dead-letter destination read.
fn with_metadata(jobs: Vec<Job>) -> Vec<Message<Job, Job>> {
    jobs.into_iter()
        .map(|job| Message::with_metadata(job.clone(), job))
        .collect()
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::new(max_attempts)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_secs(10))
        .jitter(0.0)
}

async fn run_jobs(
    jobs: Vec<Job>,
    configure: impl FnOnce(
        longshore::PipelineBuilder<TestSource<Job, Job>, Arc<Recorder>>,
    ) -> longshore::PipelineBuilder<TestSource<Job, Job>, Arc<Recorder>>,
) -> (Arc<Recorder>, Vec<longshore::testing::Outcome<Job>>) {
    let recorder = Arc::new(Recorder::default());
    let (source, sender) = TestSource::new();
    let pipeline = configure(Pipeline::builder(source, recorder.clone()))
        .start()
        .unwrap();
    *recorder.started.lock().unwrap() = Some(Instant::now());
    let outcomes = sender.test_messages(with_metadata(jobs)).await;
    drop(sender);
    pipeline.wait().await.expect("the pipeline ends cleanly");
    (recorder, outcomes)
}

#[tokio::test(start_paused = true)]
async fn attempts_and_backoff_follow_the_policy_then_dead_letter_once() {
    let graveyard = Arc::new(Graveyard::default());
    let dlq = graveyard.clone();
    let jobs = vec![job(1, 1, Fate::AlwaysFails), job(2, 2, Fate::Flaky(2))];
    let (recorder, outcomes) = run_jobs(jobs, |b| b.retry(policy(4)).dead_letter(dlq)).await;

    // Attempts 1 to 4, 100, 200 and 400 ms apart, then final.
    let ms = |ms| Duration::from_millis(ms);
    assert_eq!(
        recorder.calls_of(1),
        vec![(1, ms(0)), (2, ms(100)), (3, ms(300)), (4, ms(700))]
    );
    // Flaky(2) succeeds on its third attempt.
    assert_eq!(recorder.calls_of(2), vec![(1, ms(0)), (2, ms(100)), (3, ms(300))]);

    assert!(!outcomes[0].successful);
    assert_eq!(outcomes[0].message.attempt(), 4);
    assert!(outcomes[1].successful);
    assert_eq!(outcomes[1].message.attempt(), 3);

    assert_eq!(*recorder.failed.lock().unwrap(), vec![1]);
    let graves = graveyard.graves.lock().unwrap();
    assert_eq!(*graves, vec![(1, 4, "failed (error): always".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried_and_retry_after_sets_its_own_delay() {
    let jobs = vec![
        job(1, 1, Fate::Permanent),
        job(2, 2, Fate::RetryAfter(Duration::from_secs(3))),
    ];
    let (recorder, outcomes) = run_jobs(jobs, |b| b.retry(policy(5))).await;

    assert_eq!(recorder.calls_of(1), vec![(1, Duration::ZERO)]);
    assert!(!outcomes[0].successful);
    assert_eq!(
        outcomes[0].message.status().to_string(),
        "failed (error): malformed"
    );

    assert_eq!(
        recorder.calls_of(2),
        vec![(1, Duration::ZERO), (2, Duration::from_secs(3))]
    );
    assert!(outcomes[1].successful);
    assert_eq!(*recorder.failed.lock().unwrap(), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_dead_letter_write_is_retried_never_dropped() {
    let graveyard = Arc::new(Graveyard {
        fail_first: AtomicUsize::new(3),
        ..Graveyard::default()
    });
    let dlq = graveyard.clone();
    let jobs = (0..5).map(|id| job(id, 0, Fate::AlwaysFails)).collect();
    let (recorder, outcomes) = run_jobs(jobs, |b| {
        b.processors(Processors::new(1).max_demand(8).min_demand(4))
            .retry(policy(2))
            .dead_letter(dlq)
    })
    .await;

    assert!(outcomes.iter().all(|o| !o.successful));
    assert!(
        graveyard.writes.load(Ordering::SeqCst) > 3,
        "the failed writes were retried"
    );
    let mut dead: Vec<u32> = graveyard.graves.lock().unwrap().iter().map(|g| g.0).collect();
    dead.sort_unstable();
    assert_eq!(
        dead,
        vec![0, 1, 2, 3, 4],
        "each message dead-lettered exactly once"
    );
    let mut failed = recorder.failed.lock().unwrap().clone();
    failed.sort_unstable();
    assert_eq!(failed, vec![0, 1, 2, 3, 4], "handle_failed once per message");
}

#[tokio::test(start_paused = true)]
async fn a_retry_holds_back_later_messages_of_its_key_and_no_other_key() {
    // One processor: the other key shares it, and still is not delayed.
    let jobs = vec![
        job(1, 7, Fate::Flaky(2)),
        job(2, 7, Fate::Ok),
        job(3, 8, Fate::Ok),
        job(4, 7, Fate::Ok),
        job(5, 8, Fate::Ok),
    ];
    let (recorder, outcomes) = run_jobs(jobs, |b| {
        b.processors(Processors::new(1).max_demand(8).min_demand(4))
            .partition_by(|m: &Message<Job, Job>| m.data().key)
            .retry(policy(3))
    })
    .await;
    assert!(outcomes.iter().all(|o| o.successful));

    let calls = recorder.calls.lock().unwrap().clone();
    let order = |key: u64| -> Vec<(u32, u32)> {
        let ids: HashMap<u32, u64> = [(1, 7), (2, 7), (3, 8), (4, 7), (5, 8)].into_iter().collect();
        calls
            .iter()
            .filter(|c| ids[&c.0] == key)
            .map(|c| (c.0, c.1))
            .collect()
    };
    assert_eq!(order(7), vec![(1, 1), (1, 2), (1, 3), (2, 1), (4, 1)]);
    assert_eq!(order(8), vec![(3, 1), (5, 1)]);
    let ms = |ms| Duration::from_millis(ms);
    assert_eq!(
        recorder.calls_of(3),
        vec![(1, ms(0))],
        "the other key was not delayed"
    );
    assert_eq!(
        recorder.calls_of(5),
        vec![(1, ms(0))],
        "the other key was not delayed"
    );
    assert_eq!(
        recorder.calls_of(2),
        vec![(1, ms(300))],
        "waited for the retries of job 1"
    );
    assert_eq!(recorder.calls_of(4), vec![(1, ms(300))]);
}

/// Fails every batch's first attempt.
#[derive(Default)]
struct FlakySink {
    batches: Mutex<Vec<(BatchTrigger, Vec<u32>, Instant)>>,
}

impl Handler for FlakySink {
    type Item = u32;
    type Metadata = ();
    async fn handle_message(&self, _: &mut Message<u32>) -> Result<(), BoxError> {
        Ok(())
    }
    async fn handle_batch(&self, batch: &mut [Message<u32>], info: &BatchInfo) -> Result<(), BoxError> {
        let attempts = batch.iter().map(Message::attempt).collect();
        self.batches
            .lock()
            .unwrap()
            .push((info.trigger, attempts, Instant::now()));
        if batch[0].attempt() == 1 {
            return Err("database unavailable".into());
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_is_retried_as_a_batch_after_its_backoff() {
    let sink = Arc::new(FlakySink::default());
    let (source, sender) = TestSource::new();
    let pipeline = Pipeline::builder(source, sink.clone())
        .batcher(Batcher::new("db").batch_size(3))
        .retry(policy(3))
        .start()
        .unwrap();
    let started = Instant::now();
    let outcomes = sender.test_batch(vec![1, 2, 3]).await;
    assert!(outcomes.iter().all(|o| o.successful && o.message.attempt() == 2));
    drop(sender);
    pipeline.wait().await.expect("the pipeline ends cleanly");

    let batches = sink.batches.lock().unwrap();
    assert_eq!(batches.len(), 2);
    assert_eq!(
        (batches[0].0, batches[0].1.clone()),
        (BatchTrigger::Size, vec![1, 1, 1])
    );
    assert_eq!(
        (batches[1].0, batches[1].1.clone()),
        (BatchTrigger::Retry, vec![2, 2, 2])
    );
    assert_eq!(batches[1].2 - started, Duration::from_millis(100));
}

/// What an acknowledger was told: job, successful, redeliver after.
type AckLog = Arc<Mutex<Vec<(u32, bool, Option<Duration>)>>>;

/// A source whose broker redelivers failed messages, recording what it is told.
struct Redelivering {
    inner: TestSource<Job, Job>,
    acks: AckLog,
    redelivery: Redelivery,
}

struct RedeliveringAcks {
    inner: longshore::testing::TestAcknowledger<Job>,
    acks: AckLog,
}

impl Acknowledger<Job> for RedeliveringAcks {
    async fn ack<T: Send + 'static>(&self, successful: Vec<Message<T, Job>>, failed: Vec<Message<T, Job>>) {
        {
            let mut acks = self.acks.lock().unwrap();
            acks.extend(
                successful
                    .iter()
                    .map(|m| (m.metadata().id, true, m.redeliver_after())),
            );
            acks.extend(
                failed
                    .iter()
                    .map(|m| (m.metadata().id, false, m.redeliver_after())),
            );
        }
        self.inner.ack(successful, failed).await;
    }
}

impl Source for Redelivering {
    type Data = Job;
    type Metadata = Job;
    type Acknowledger = RedeliveringAcks;

    fn acknowledger(&self) -> RedeliveringAcks {
        RedeliveringAcks {
            inner: self.inner.acknowledger(),
            acks: self.acks.clone(),
        }
    }

    fn redelivery(&self) -> Redelivery {
        self.redelivery
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<Job, Job>>>, BoxError> {
        // A broker counts deliveries; here, the job's id stands for its receive count.
        let messages = self.inner.receive(demand).await?;
        Ok(messages.map(|ms| {
            ms.into_iter()
                .map(|m| {
                    let attempt = m.data().id;
                    m.with_attempt(attempt)
                })
                .collect()
        }))
    }
}

/// A pipeline over a [`Redelivering`] source of `redelivery`, with `retry` and a
/// dead-letter destination; with `ordered`, partitioned by the jobs' keys.
struct Redelivered {
    pipeline: Pipeline,
    sender: longshore::testing::TestSender<Job, Job>,
    recorder: Arc<Recorder>,
    graveyard: Arc<Graveyard>,
    acks: AckLog,
}

fn redelivered(redelivery: Redelivery, retry: RetryPolicy, ordered: bool) -> Redelivered {
    let recorder = Arc::new(Recorder::default());
    let graveyard = Arc::new(Graveyard::default());
    let (inner, sender) = TestSource::new();
    let acks = AckLog::default();
    let source = Redelivering {
        inner,
        acks: Arc::clone(&acks),
        redelivery,
    };
    let mut builder = Pipeline::builder(source, recorder.clone())
        .retry(retry)
        .dead_letter(graveyard.clone());
    if ordered {
        builder = builder.partition_by(|message| message.data().key);
    }
    let pipeline = builder.start().unwrap();
    Redelivered {
        pipeline,
        sender,
        recorder,
        graveyard,
        acks,
    }
}

#[tokio::test(start_paused = true)]
async fn with_broker_redelivery_failures_go_back_to_the_broker_with_their_backoff() {
    let Redelivered {
        pipeline,
        sender,
        recorder,
        graveyard,
        acks,
    } = redelivered(Redelivery::Broker, policy(3), false);
    // Deliveries 1 and 2 of a failing message, then its third and last.
    let outcomes = sender
        .test_messages(with_metadata(vec![
            job(1, 0, Fate::AlwaysFails),
            job(2, 0, Fate::AlwaysFails),
            job(3, 0, Fate::AlwaysFails),
        ]))
        .await;
    drop(sender);
    let summary = pipeline.wait().await.expect("the pipeline ends cleanly");

    assert!(outcomes.iter().all(|o| !o.successful));
    // Three deliveries of one message: two handed back to the broker, one failure for good.
    assert_eq!(
        (
            summary.received,
            summary.redelivered,
            summary.failed,
            summary.dead_lettered
        ),
        (3, 2, 1, 1)
    );
    assert_eq!((summary.retried, summary.successful, summary.released), (2, 0, 0));
    let mut acks = acks.lock().unwrap().clone();
    acks.sort_by_key(|a| a.0);
    let ms = |ms| Some(Duration::from_millis(ms));
    assert_eq!(
        acks,
        vec![(1, false, ms(100)), (2, false, ms(200)), (3, false, None)]
    );
    // Only the last delivery is final: handle_failed and the dead letter see it alone.
    assert_eq!(*recorder.failed.lock().unwrap(), vec![3]);
    assert_eq!(graveyard.graves.lock().unwrap().len(), 1);
    // No in-process retry: one call per delivery.
    assert_eq!(recorder.calls.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn with_broker_redelivery_ordered_messages_are_retried_in_process_and_none_passes_them() {
    let Redelivered {
        pipeline,
        sender,
        recorder,
        acks,
        ..
    } = redelivered(Redelivery::Broker, policy(3), true);
    // Job 1 fails its first attempt; job 2, of the same key, comes after it. (The source
    // takes a job's id for its delivery count.)
    let outcomes = sender
        .test_messages(with_metadata(vec![
            job(1, 7, Fate::Flaky(1)),
            job(2, 7, Fate::Ok),
        ]))
        .await;
    drop(sender);
    let summary = pipeline.wait().await.expect("the pipeline ends cleanly");

    assert!(outcomes.iter().all(|o| o.successful));
    // Handed back to the broker, job 1 would be delivered again after job 2 was handled:
    // retried in process instead, its key held, job 2 waits for it.
    let calls: Vec<(u32, u32)> = recorder
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.0, c.1))
        .collect();
    assert_eq!(calls, vec![(1, 1), (1, 2), (2, 2)]);
    assert_eq!(
        (summary.retried, summary.redelivered, summary.successful),
        (1, 0, 2)
    );
    assert!(acks
        .lock()
        .unwrap()
        .iter()
        .all(|&(_, successful, after)| successful && after.is_none()));
}

#[tokio::test(start_paused = true)]
async fn a_message_delivered_more_often_than_allowed_is_failed_for_good_unhandled() {
    let run = redelivered(Redelivery::Broker, policy(3).with_max_deliveries(5), false);
    // Its 5th delivery, within the limit; another's 6th: its last five ended unseen (a
    // consumer killed each time).
    let outcomes = run
        .sender
        .test_messages(with_metadata(vec![job(5, 0, Fate::Ok), job(6, 0, Fate::Ok)]))
        .await;
    drop(run.sender);
    let summary = run.pipeline.wait().await.expect("the pipeline ends cleanly");
    let (recorder, acks) = (run.recorder, run.acks);

    assert_eq!(outcomes.iter().filter(|o| o.successful).count(), 1);
    assert_eq!(
        (summary.successful, summary.failed, summary.dead_lettered),
        (1, 1, 1)
    );
    // Never handed to the handler; to handle_failed and the dead letter, as a failure for
    // good.
    let called: Vec<u32> = recorder.calls.lock().unwrap().iter().map(|call| call.0).collect();
    assert_eq!(called, vec![5]);
    assert_eq!(*recorder.failed.lock().unwrap(), vec![6]);
    assert_eq!(run.graveyard.graves.lock().unwrap().len(), 1);
    let mut acks = acks.lock().unwrap().clone();
    acks.sort_by_key(|a| a.0);
    assert_eq!(acks, vec![(5, true, None), (6, false, None)]);

    // A source whose attempt is not its broker's delivery count (in-process redelivery)
    // is not judged by it.
    let Redelivered { pipeline, sender, .. } =
        redelivered(Redelivery::InProcess, policy(3).with_max_deliveries(5), false);
    let outcomes = sender
        .test_messages(with_metadata(vec![job(6, 0, Fate::Ok)]))
        .await;
    drop(sender);
    pipeline.wait().await.expect("the pipeline ends cleanly");
    assert!(
        outcomes[0].successful,
        "judged by a count that is not a delivery count"
    );

    // A limit below the attempts is refused.
    let error = policy(3).with_max_deliveries(2).validate().unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid retry.max_deliveries: must be at least retry.max_attempts (3), got 2"
    );
}

/// Counts what its source handed out and when.
struct Nothing;

impl Handler for Nothing {
    type Item = u64;
    type Metadata = ();
    async fn handle_message(&self, _: &mut Message<u64>) -> Result<(), BoxError> {
        Ok(())
    }
    async fn handle_batch(&self, _: &mut [Message<u64>], _: &BatchInfo) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_bounds_fetches_and_can_be_changed_at_runtime() {
    let source = MemorySource::from_iter(0..u64::MAX);
    let pipeline = Pipeline::builder(source, Nothing)
        .processors(Processors::new(2).max_demand(10).min_demand(5))
        .rate_limit(RateLimit::per_second(100).burst(10))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    let limits = pipeline.rate_limits();

    // 5 s at 100/s with a burst of 10: at most 510 fetched.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let first = stats.get();
    assert!(first.received <= 510, "fetched {}", first.received);
    assert!(first.received >= 490, "fetched only {}", first.received);
    assert!(
        first.rate_limited > Duration::from_secs(4),
        "waited {:?}",
        first.rate_limited
    );

    // Raised to 1,000/s: the next 5 s fetch about ten times as much.
    limits.set(Some(RateLimit::per_second(1_000).burst(10))).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = stats.get().received - first.received;
    assert!((4_900..=5_010).contains(&second), "fetched {second}");

    let error = limits.set(Some(RateLimit::per_second(0))).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid rate_limit.messages: must be at least 1, got 0"
    );
    let _ = pipeline.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_batcher_rate_limit_paces_batches_without_fetching_more() {
    let handler = Arc::new(FlakySink::default());
    let source = MemorySource::from_iter(0..1_000u32);
    let pipeline = Pipeline::builder(source, handler.clone())
        .processors(Processors::new(2).max_demand(10).min_demand(5))
        .batcher(
            Batcher::new("db")
                .batch_size(10)
                .rate_limit(RateLimit::per_second(50).burst(10)),
        )
        .retry(policy(2))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    let limits = pipeline.rate_limits();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let now = stats.get();
    // 50 messages/s into batches (first attempts and retries alike): about 200 in 4 s.
    let batched: usize = handler.batches.lock().unwrap().iter().map(|b| b.1.len()).sum();
    assert!((190..=210).contains(&batched), "batched {batched}");
    assert!(now.received <= batched as u64 + now.max_in_flight as u64);

    assert!(limits.set_batcher("nope", None).is_err());
    limits.set_batcher("db", None).unwrap();
    let summary = pipeline.wait().await.expect("the pipeline ends cleanly");
    assert_eq!(summary.successful, 1_000);
}

/// Takes the number a message's text is: the pipeline's item.
#[derive(Default)]
struct Numbers {
    handled: Mutex<Vec<u32>>,
    failed: Mutex<Vec<u32>>,
    undecoded: Mutex<Vec<(String, String)>>,
}

impl Handler for Numbers {
    type Item = u32;
    type Metadata = String;

    async fn handle_message(&self, message: &mut Message<u32, String>) -> Result<(), BoxError> {
        self.handled.lock().unwrap().push(*message.data());
        if *message.data() == 0 {
            return Err(Permanent::new("zero").into());
        }
        Ok(())
    }

    async fn handle_failed(&self, messages: &mut [Message<u32, String>]) {
        self.failed
            .lock()
            .unwrap()
            .extend(messages.iter().map(|m| *m.data()));
    }

    async fn handle_undecoded(&self, messages: &mut [Message<(), String>]) {
        let seen = messages
            .iter()
            .map(|m| (m.metadata().clone(), m.status().to_string()));
        self.undecoded.lock().unwrap().extend(seen);
    }
}

#[tokio::test(start_paused = true)]
async fn a_payload_that_does_not_decode_fails_for_good_reaching_only_handle_undecoded_and_the_dead_letter() {
    let handler = Arc::new(Numbers::default());
    let graveyard = Arc::new(TextGraves::default());
    let texts = ["1", "x", "0", "3"];
    let (source, sender) = TestSource::<String, String>::new();
    let pipeline = Pipeline::builder(source, handler.clone())
        .decode(longshore::decode::Json::<u32>::new())
        .retry(policy(3))
        .dead_letter(DeadText(graveyard.clone()))
        .start()
        .unwrap();
    let messages = texts
        .iter()
        .map(|t| Message::with_metadata(t.to_string(), t.to_string()));
    let outcomes = sender.test_messages(messages.collect()).await;
    drop(sender);
    let summary = pipeline.wait().await.unwrap();

    let successful: Vec<bool> = outcomes.iter().map(|o| o.successful).collect();
    assert_eq!(successful, [true, false, false, true]);
    // Decoded once: handle_message saw numbers, never the text that is not one.
    assert_eq!(*handler.handled.lock().unwrap(), [1, 0, 3]);
    assert_eq!(*handler.failed.lock().unwrap(), [0]);
    let undecoded = handler.undecoded.lock().unwrap().clone();
    assert_eq!(undecoded.len(), 1);
    assert_eq!(undecoded[0].0, "x");
    assert!(
        undecoded[0].1.starts_with("failed (decode): expected value"),
        "{}",
        undecoded[0].1
    );
    // Not retried, and dead-lettered with what it was, beside the handler's own failure.
    let mut graves = graveyard.0.lock().unwrap().clone();
    graves.sort();
    assert_eq!(graves, [("0".to_owned(), 1), ("x".to_owned(), 1)]);
    assert_eq!(
        (summary.failed, summary.dead_lettered, summary.retried),
        (2, 2, 0)
    );
    assert_eq!(outcomes[1].data::<u32>(), None, "no decoded value");
    assert_eq!(outcomes[3].data::<u32>(), Some(&3));
}

/// Dead letters of text: the original text (the metadata) and the attempt.
#[derive(Default)]
struct TextGraves(Mutex<Vec<(String, u32)>>);

struct DeadText(Arc<TextGraves>);

impl DeadLetter<String> for DeadText {
    async fn dead_letter(&self, messages: &mut [Message<(), String>]) -> Result<(), BoxError> {
        let graves = messages.iter().map(|m| (m.metadata().clone(), m.attempt()));
        self.0 .0.lock().unwrap().extend(graves);
        Ok(())
    }
}
