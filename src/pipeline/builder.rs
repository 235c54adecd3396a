//! Builds and starts a pipeline: source, processors, batchers, limits.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::control::batching::{BatchSettings, Batching};
use crate::control::changes::ChangeLog;
use crate::control::pause::PauseSwitch;
use crate::control::scaling::Scaling;
use crate::decode::{Decode, Identity};
use crate::error::BuildError;
use crate::failure::dead_letter::{DeadLetter, ErasedDeadLetter};
use crate::failure::rate_limit::{Limiter, RateLimit, RateLimits};
use crate::failure::retry::RetryPolicy;
use crate::handler::Handler;
use crate::message::Message;
use crate::metrics::health::{self, PipelineHealth};
use crate::metrics::{BatcherMetrics, PipelineMetrics, SourceStalls, Stage, StageMetrics};
use crate::pipeline::config::{Batcher, PipelineConfig, Processors};
use crate::pipeline::{stall, Pipeline};
use crate::source::{Acknowledger as _, Plan, Source};
use crate::topology::{
    BatchDispatch, BatchProcessor, BatcherRoute, BatcherStage, ByKey, Context, Dispatch, Fault, Input,
    KeyQueue, LogLimit, Meter, PartitionBy, Pool, Processor, Producer, SpawnBatchProcessor,
};

/// How often a running pipeline asks its source whether it can still deliver.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);

/// Configures a pipeline; made by [`Pipeline::builder`].
///
/// Every setting has a default: one producer, as many processors as cores with
/// `max_demand` 64, no batcher, a 30 s shutdown deadline.
#[must_use = "a builder does nothing until `start` is called"]
pub struct PipelineBuilder<S: Source, H, C = Identity> {
    config: PipelineConfig,
    source: S,
    handler: H,
    codec: C,
    partition_by: Option<PartitionBy<S::Data, S::Metadata>>,
    dead_letter: Option<Box<dyn ErasedDeadLetter<S::Metadata>>>,
    #[cfg(feature = "otel")]
    tracing: Option<std::sync::Arc<dyn crate::trace::ErasedTracing<S::Metadata>>>,
}

impl<S, H> PipelineBuilder<S, H>
where
    S: Source,
    H: Handler<Metadata = S::Metadata>,
{
    pub(crate) fn new(source: S, handler: H) -> Self {
        PipelineBuilder {
            config: PipelineConfig::default(),
            source,
            handler,
            codec: Identity,
            partition_by: None,
            dead_letter: None,
            #[cfg(feature = "otel")]
            tracing: None,
        }
    }
}

impl<S, H, C> PipelineBuilder<S, H, C>
where
    S: Source,
    H: Handler<Metadata = S::Metadata>,
{
    /// Decodes each message's data with `codec` before the handler sees it: the
    /// handler's [`Item`](Handler::Item) is then what the codec makes (an order parsed
    /// from JSON), in every stage. Decoding runs in the processors, each decoding the
    /// chunks it takes, once per message (a retry reuses the decoded value). A message
    /// that does not decode fails for good and reaches only
    /// [`Handler::handle_undecoded`] (see [`decode`](crate::decode)).
    ///
    /// ```
    /// use longshore::decode::Json;
    /// use longshore::source::memory::MemorySource;
    /// use longshore::{BoxError, Handler, Message, Pipeline};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Order { cents: u64 }
    ///
    /// struct Orders;
    /// impl Handler for Orders {
    ///     type Item = Order;
    ///     type Metadata = ();
    ///     async fn handle_message(&self, message: &mut Message<Order>) -> Result<(), BoxError> {
    ///         if message.data().cents == 0 {
    ///             return Err("a free order".into());
    ///         }
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let payloads = [r#"{"cents": 250}"#, r#"{"cents": 0}"#, "not json"];
    /// let source = MemorySource::from_iter(payloads.map(String::from));
    /// let pipeline = Pipeline::builder(source, Orders).decode(Json::new()).start().unwrap();
    /// let summary = pipeline.wait().await.unwrap();
    /// assert_eq!((summary.successful, summary.failed), (1, 2));
    /// # }
    /// ```
    pub fn decode<C2>(self, codec: C2) -> PipelineBuilder<S, H, C2>
    where
        C2: Decode<S::Data, S::Metadata, Output = H::Item>,
    {
        PipelineBuilder {
            config: self.config,
            source: self.source,
            handler: self.handler,
            codec,
            partition_by: self.partition_by,
            dead_letter: self.dead_letter,
            #[cfg(feature = "otel")]
            tracing: self.tracing,
        }
    }

    /// Takes every setting of `config` (from a configuration file, say), replacing those
    /// set before; later calls change them further.
    pub fn config(mut self, config: PipelineConfig) -> Self {
        self.config = config;
        self
    }

    /// The pipeline's name, used in logs and metrics (default `longshore`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// How many tasks call [`Source::receive`] at once (default 1).
    pub fn source_concurrency(mut self, concurrency: usize) -> Self {
        self.config.source_concurrency = concurrency;
        self
    }

    /// The processor pool (default [`Processors::default`]).
    pub fn processors(mut self, processors: Processors) -> Self {
        self.config.processors = processors;
        self
    }

    /// Orders messages by key: messages with the same key are handled one after the
    /// other, in the order received. A key is held by one processor at a time, until its
    /// messages (and their retries) are done with; any free processor takes the keys no
    /// other holds, so one slow key holds back no other.
    ///
    /// Without it, any free processor takes the next chunk, unless the source keeps an
    /// order of its own ([`Source::partition_by`]: Kafka's partitions, SQS FIFO's message
    /// groups). With it, a hot key's messages may wait beyond `max_demand`, up to the
    /// in-flight limit.
    ///
    /// The key is computed from the message as received, before any decode step: from
    /// its metadata (a Kafka key, an SQS group) or its raw data.
    pub fn partition_by<F>(mut self, key: F) -> Self
    where
        F: Fn(&Message<S::Data, S::Metadata>) -> u64 + Send + Sync + 'static,
    {
        self.partition_by = Some(Arc::new(key));
        self
    }

    /// Adds a batcher. Successful messages go to the one they name with
    /// [`Message::put_batcher`], else to the first added.
    pub fn batcher(mut self, batcher: Batcher) -> Self {
        self.config.batchers.push(batcher);
        self
    }

    /// How long a shutdown may take to drain (default 30 s). When it passes, handler calls
    /// still running are cut short and every message not finished is handed back to the
    /// source at once, unacknowledged ([`Acknowledger::release`](crate::Acknowledger::release):
    /// SQS makes it visible again, Kafka does not commit it), taking at most
    /// [`HAND_BACK_TIME`](crate::HAND_BACK_TIME) more; messages finished before then are
    /// acknowledged. Keep the deadline plus that below Kubernetes'
    /// `terminationGracePeriodSeconds` (the Helm chart does).
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.config.shutdown_deadline = deadline;
        self
    }

    /// The most messages received and not yet acknowledged. Default: enough for every
    /// processor's `max_demand` and, per processor, the smallest fetch more
    /// (`max_demand - min_demand`: fetched while the chunks are handled, so that a
    /// processor done with one finds the next ready), plus, per batcher, one batch
    /// filling and one per concurrent batch task:
    /// `processors × (2 × max_demand - min_demand) + Σ batch_size × (concurrency + 1)`.
    ///
    /// A lower limit holds less (and redelivers less after a crash); at
    /// `processors × max_demand` each processor waits for the source between chunks.
    pub fn max_in_flight(mut self, limit: usize) -> Self {
        self.config.max_in_flight = Some(limit);
        self
    }

    /// How failed messages are retried (default [`RetryPolicy::none`]). Retries happen in
    /// process, without blocking the stage, unless the source has the broker redeliver
    /// ([`Redelivery::Broker`](crate::source::Redelivery::Broker)) and messages are not
    /// ordered: an ordered pipeline retries in process, the message's key held, so that
    /// none of the key's later messages passes it. A message waiting for its retry stays
    /// in flight: many failures slow fetching instead of growing memory.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// Where messages go after their last attempt, before they are acknowledged as failed
    /// (default: nowhere, after [`Handler::handle_failed`]).
    pub fn dead_letter<D: DeadLetter<S::Metadata>>(mut self, destination: D) -> Self {
        self.dead_letter = Some(Box::new(destination));
        self
    }

    /// Makes an OpenTelemetry span for every message and batch (feature `otel`; default:
    /// none): each message's span continues the trace its producer put on it (see
    /// [`crate::trace`]).
    ///
    /// ```
    /// use longshore::source::memory::MemorySource;
    /// use longshore::trace::Tracing;
    /// use longshore::{BoxError, Handler, Message, Pipeline};
    /// use opentelemetry::trace::TracerProvider;
    /// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    ///
    /// struct Nothing;
    /// impl Handler for Nothing {
    ///     type Item = u32;
    ///     type Metadata = ();
    ///     async fn handle_message(&self, _: &mut Message<u32>) -> Result<(), BoxError> {
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let exporter = InMemorySpanExporter::default();
    /// let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    /// let pipeline = Pipeline::builder(MemorySource::from_iter([1, 2, 3]), Nothing)
    ///     .tracing(Tracing::new(provider.tracer("example")))
    ///     .start()
    ///     .unwrap();
    /// pipeline.wait().await.unwrap();
    /// let spans = exporter.get_finished_spans().unwrap();
    /// assert_eq!(spans.len(), 3);
    /// assert_eq!(spans[0].name, "process memory");
    /// # }
    /// ```
    #[cfg(feature = "otel")]
    pub fn tracing(mut self, tracing: crate::trace::Tracing) -> Self
    where
        S::Metadata: crate::trace::TraceMetadata,
    {
        self.tracing = Some(tracing.erase());
        self
    }

    /// When a stage counts as stalled (default: holding messages with none finished for
    /// 60 s; flagged in `longshore_stage_stalled`, `/healthz`'s body and `/topology`,
    /// failing liveness only if the watch says so).
    pub fn stall_watch(mut self, watch: crate::StallWatch) -> Self {
        self.config.stall = watch;
        self
    }

    /// At most this many messages per interval are fetched from the source (default: no
    /// limit). The limit applies before the fetch, so a throttled pipeline holds nothing
    /// extra. Changeable at runtime through [`Pipeline::rate_limits`].
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.config.rate_limit = Some(limit);
        self
    }

    /// Checks the configuration and starts the pipeline's tasks on the current tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the first invalid field, or `runtime` when called outside
    /// a tokio runtime.
    pub fn start(self) -> Result<Pipeline, BuildError>
    where
        S::Metadata: Sync,
        C: Decode<S::Data, S::Metadata, Output = H::Item>,
    {
        let limit = self.config.validate()?;
        let config = self.config;
        let partition_by = self.partition_by.or_else(|| self.source.partition_by());
        let ordered = partition_by.is_some();
        if ordered && config.source_concurrency > 1 {
            return Err(BuildError::new(
                "source_concurrency",
                format!(
                    "must be 1 when messages are ordered (partition_by, or the source's own order such as \
                     Kafka's partitions or SQS FIFO's groups): concurrent fetches could pass each other; got {}",
                    config.source_concurrency
                ),
            ));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::new(
                "runtime",
                "start must be called within a tokio runtime",
            ));
        }
        // Before any task starts: a source may refuse the pipeline's setup.
        self.source.prepare(&Plan {
            max_in_flight: limit,
            dead_letter: self.dead_letter.is_some(),
            source_concurrency: config.source_concurrency,
            ordered,
        })?;
        let meter = Meter::new(
            limit,
            Limiter::new(config.rate_limit),
            PipelineMetrics::new(&config.name, limit),
        );
        let stop = CancellationToken::new();
        let abandon = CancellationToken::new();
        let fault = Arc::new(Fault::new(stop.clone()));
        let mut tasks = JoinSet::new();
        let ctx = Arc::new(Context {
            handler: self.handler,
            acknowledger: self.source.acknowledger(),
            retry: config.retry,
            redelivery: self.source.redelivery(),
            ordered,
            dead_letter: self.dead_letter,
            #[cfg(feature = "otel")]
            tracing: self.tracing,
            meter: meter.clone(),
            fault: fault.clone(),
            abandon: abandon.clone(),
            discard_log: LogLimit::new(Duration::from_secs(1)),
        });
        let processors = config.processors.concurrency;

        let changes = ChangeLog::new(&config.name);

        // The stages the stall watch looks at.
        let mut stalling = Vec::with_capacity(config.batchers.len() + 1);

        // Built from the last stage back, so each stage holds the sender of the next.
        let mut routes = Vec::with_capacity(config.batchers.len());
        let mut batcher_limits = Vec::with_capacity(config.batchers.len());
        let mut batch_settings = Vec::with_capacity(config.batchers.len());
        let mut batcher_sizes = Vec::with_capacity(config.batchers.len());
        for batcher in &config.batchers {
            let name: Arc<str> = Arc::from(batcher.name.as_str());
            let rate_limit = Limiter::new(batcher.rate_limit);
            batcher_limits.push((name.clone(), rate_limit.clone()));
            let metrics = BatcherMetrics::new(&config.name, &name);
            stalling.push(stall::Watched {
                name: format!("batch_processor {name}"),
                metrics: metrics.batch_processor.clone(),
            });
            let tasks_gauge = metrics.batch_processor.tasks.clone();
            let (size, sized) = watch::channel(batcher.concurrency);
            batcher_sizes.push((name.clone(), size));
            let (ctx, metrics_of_one, stop, abandon) =
                (ctx.clone(), metrics.clone(), stop.clone(), abandon.clone());
            let batch_size = batcher.batch_size;
            let batch_processor = move |input, retire| BatchProcessor {
                ctx: ctx.clone(),
                input,
                rate_limit: rate_limit.clone(),
                call: metrics_of_one.batch_processor.calls.slot(),
                metrics: metrics_of_one.clone(),
                batch_size,
                ordered,
                stop: stop.clone(),
                abandon: abandon.child_token(),
                retire,
            };
            let output = if ordered {
                // Resized by the batcher key by key (see `ByKey`): never asked to retire, their
                // queues close instead.
                let spawn: SpawnBatchProcessor<_, _> =
                    Box::new(move |input| Box::pin(batch_processor(input, Arc::default()).run()));
                BatchDispatch::ByKey(ByKey::new(spawn, sized, fault.clone(), tasks_gauge))
            } else {
                let (batch_tx, batch_rx) = async_channel::bounded(batcher.concurrency);
                let pool = Pool {
                    spawn: move |retire| batch_processor(batch_rx.clone(), retire).run(),
                    size: sized,
                    fault: fault.clone(),
                    tasks_gauge,
                };
                tasks.spawn(pool.run());
                BatchDispatch::Shared(batch_tx)
            };
            let (tx, rx) = mpsc::channel(processors * 2);
            let settings = BatchSettings::new(batcher.batch_size, batcher.batch_timeout);
            batch_settings.push((name.clone(), settings.clone()));
            let stage = BatcherStage {
                name: name.clone(),
                settings,
                input: rx,
                output,
                metrics,
            };
            tasks.spawn(stage.run());
            routes.push(BatcherRoute { name, tx });
        }

        let queue_len = 2;
        let metrics = StageMetrics::new(&config.name, Stage::Processor, "");
        stalling.insert(
            0,
            stall::Watched {
                name: "processor".to_owned(),
                metrics: metrics.clone(),
            },
        );
        let tasks_gauge = metrics.tasks.clone();
        let max_demand = config.processors.max_demand;
        let codec = Arc::new(self.codec);
        let (processor_ctx, processor_stop, processor_abandon) = (ctx.clone(), stop.clone(), abandon.clone());
        let processor = move |input, retire| Processor {
            ctx: processor_ctx.clone(),
            input,
            codec: codec.clone(),
            batchers: routes.clone(),
            stop: processor_stop.clone(),
            abandon: processor_abandon.child_token(),
            call: metrics.calls.slot(),
            metrics: metrics.clone(),
            time_each: AtomicBool::new(false),
            slow: AtomicBool::new(true),
            settle_each: AtomicBool::new(processor_ctx.acknowledger.acknowledges_each()),
            max_demand,
            retire,
        };
        let (processor_size, processor_sized) = watch::channel(processors);
        let (dispatch, input) = match partition_by {
            None => {
                let (tx, rx) = async_channel::bounded(processors * queue_len);
                (Dispatch::Shared(tx), Input::Shared(rx))
            }
            Some(partition_by) => {
                let (sender, queue) = KeyQueue::new(max_demand);
                let dispatch = Dispatch::Partitioned {
                    queue: sender,
                    partition_by,
                };
                (dispatch, Input::Keyed(queue))
            }
        };
        // The pool owns the routes to the batchers (through `processor`): they close once
        // its last processor has ended.
        let pool = Pool {
            spawn: move |retire| processor(input.clone(), retire).run(),
            size: processor_sized,
            fault: fault.clone(),
            tasks_gauge,
        };
        tasks.spawn(pool.run());

        let source = Arc::new(self.source);
        let source_panel = source.panel();
        if let Some(panel) = &source_panel {
            panel.attach(crate::source::PartChanges(changes.clone()));
        }
        let max_fetch = match dispatch {
            // A fetch that fits one processor's chunk is dispatched without copying.
            Dispatch::Shared(_) => max_demand,
            Dispatch::Partitioned { .. } => limit,
        };
        let pause = PauseSwitch::new(meter.metrics.paused.clone(), changes.clone());
        let mut producers = JoinSet::new();
        for _ in 0..config.source_concurrency {
            let producer = Producer {
                source: source.clone(),
                meter: meter.clone(),
                dispatch: dispatch.clone(),
                min_fetch: max_demand - config.processors.effective_min_demand(),
                max_fetch,
                max_chunk: max_demand,
                stop: stop.clone(),
                paused: pause.watch(),
            };
            producers.spawn(producer.run());
        }
        drop(dispatch);
        // Not ready once the shutdown starts, or once the source is exhausted.
        let running = stop.child_token();
        let ready_source = source.clone();
        let alive = fault.clone();
        let stalls = Arc::new(stall::Stalls::default());
        let health = health::register(PipelineHealth {
            stop: running.clone(),
            source_ready: Box::new(move || ready_source.is_ready()),
            alive: Box::new(move || alive.cause().is_none()),
            name: config.name.clone(),
            stalls: stalls.clone(),
            stall_fails_liveness: config.stall.fails_liveness,
        });
        // The source's liveness, asked while it delivers: a dead or wedged source stops the
        // pipeline with an error, instead of leaving it waiting for messages forever.
        let (watched, watching, watchdog_fault) = (source.clone(), running.clone(), fault.clone());
        tasks.spawn(async move {
            let mut every = tokio::time::interval(LIVENESS_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = watching.cancelled() => return,
                    _ = every.tick() => {}
                }
                if let Err(error) = watched.liveness() {
                    watchdog_fault.raise(format!("the source can no longer deliver: {error}"));
                    return;
                }
            }
        });
        // The acknowledger flushes once, after every stage has acknowledged its last.
        let mut stages = tasks;
        let mut tasks = JoinSet::new();
        // The source is shut down once, after its last producer stops; the flush does not
        // wait for it (an SQS shutdown awaits its long polls), so that a drain cut short
        // at the deadline still sends what was acknowledged.
        let producer_fault = fault.clone();
        tasks.spawn(async move {
            producer_fault.join_all(&mut producers).await;
            running.cancel();
            source.shutdown().await;
        });
        // Watches for stalls until the last stage has ended.
        let stages_done = CancellationToken::new();
        tasks.spawn(
            stall::Watch {
                stages: stalling,
                source: source_panel.clone(),
                source_stalls: SourceStalls::new(&config.name),
                pause: pause.clone(),
                after: config.stall.after,
                batching: batch_settings
                    .iter()
                    .map(|(_, settings)| settings.clone())
                    .collect(),
                stalls: stalls.clone(),
            }
            .run(stages_done.clone()),
        );
        let stage_fault = fault.clone();
        tasks.spawn(async move {
            stage_fault.join_all(&mut stages).await;
            stages_done.cancel();
            ctx.acknowledger.flush().await;
        });

        tracing::info!(pipeline = %config.name, max_in_flight = limit, "pipeline started");
        let rate_limits = RateLimits {
            pipeline: meter.rate_limit.clone(),
            batchers: batcher_limits.into(),
            changes: changes.clone(),
        };
        Ok(Pipeline {
            name: config.name,
            meter,
            rate_limits,
            batching: Batching {
                batchers: batch_settings.into(),
                changes: changes.clone(),
            },
            scaling: Scaling {
                processors: Arc::new(processor_size),
                batchers: batcher_sizes.into(),
                changes: changes.clone(),
            },
            changes,
            pause,
            stop,
            abandon,
            tasks,
            deadline: config.shutdown_deadline,
            fault,
            health,
            stalls,
            source_panel,
        })
    }
}

impl<S: Source, H, C> fmt::Debug for PipelineBuilder<S, H, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("config", &self.config)
            .field("partition_by", &self.partition_by.is_some())
            .field("dead_letter", &self.dead_letter.is_some())
            .finish_non_exhaustive()
    }
}
