//! What a source shows of itself while it runs: its parts (Kafka's partitions, an SQS
//! queue) with what waits in each, and, where the broker allows it, a pause per part.
//! The topology page draws it, the stall watch looks at it and the control surface
//! pauses through it, so that each connector writes only the reading, once.

use std::time::Duration;

/// One part of what a source consumes: a Kafka partition, an SQS queue.
///
/// Figures a source cannot tell are `None`; the page then shows a dash.
///
/// ```
/// use std::time::Duration;
/// use longshore::source::SourcePart;
///
/// let part = SourcePart::new("orders/3")
///     .waiting(1200)
///     .waiting_seconds(42.0)
///     .in_flight(64)
///     .paused(true)
///     .stalled_for(Duration::from_secs(5));
/// assert_eq!((part.name.as_str(), part.waiting, part.paused), ("orders/3", Some(1200), true));
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct SourcePart {
    /// How the control surface names it: `topic/partition` for Kafka, the queue's name
    /// for SQS.
    pub name: String,
    /// Messages waiting at the broker for this consumer (Kafka: the lag; SQS: visible).
    pub waiting: Option<u64>,
    /// How far behind in time (Kafka: the oldest unfinished record's age; SQS: the
    /// oldest message's age).
    pub waiting_seconds: Option<f64>,
    /// Messages handed to the pipeline and not yet acknowledged: what the stall watch
    /// waits on (records a source queued for the pipeline's demand are not).
    pub in_flight: Option<u64>,
    /// Paused by an operator: nothing more of it is fetched.
    pub paused: bool,
    /// How long it has had messages outstanding or waiting and finished none (zero while
    /// it progresses, or has nothing to do).
    #[serde(serialize_with = "seconds")]
    pub stalled_for: Duration,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

impl SourcePart {
    /// A part named `name`, with nothing known of it yet.
    pub fn new(name: impl Into<String>) -> Self {
        SourcePart {
            name: name.into(),
            waiting: None,
            waiting_seconds: None,
            in_flight: None,
            paused: false,
            stalled_for: Duration::ZERO,
        }
    }

    /// Messages waiting at the broker.
    pub fn waiting(mut self, messages: u64) -> Self {
        self.waiting = Some(messages);
        self
    }

    /// How far behind in time, in seconds.
    pub fn waiting_seconds(mut self, seconds: f64) -> Self {
        self.waiting_seconds = Some(seconds);
        self
    }

    /// Messages taken and not yet acknowledged.
    pub fn in_flight(mut self, messages: u64) -> Self {
        self.in_flight = Some(messages);
        self
    }

    /// Whether an operator paused it.
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// How long it has made no progress while it had work.
    pub fn stalled_for(mut self, stalled_for: Duration) -> Self {
        self.stalled_for = stalled_for;
        self
    }
}

/// A running source's parts, for the topology page, the stall watch and the control
/// surface; returned by [`Source::panel`](crate::Source::panel).
///
/// Read from the source's own bookkeeping: [`parts`](SourcePanel::parts) is called each
/// second and on each page refresh, so it must not call the broker.
///
/// ```
/// use longshore::source::{SourcePanel, SourcePart};
///
/// /// A single queue that cannot be paused.
/// struct OneQueue;
///
/// impl SourcePanel for OneQueue {
///     fn parts(&self) -> Vec<SourcePart> {
///         vec![SourcePart::new("jobs").waiting(3)]
///     }
/// }
///
/// let panel = OneQueue;
/// assert_eq!(panel.parts()[0].waiting, Some(3));
/// assert_eq!(panel.check_pause("jobs").unwrap_err(), "this source cannot pause jobs");
/// ```
pub trait SourcePanel: Send + Sync + 'static {
    /// The parts consumed now, sorted by name.
    fn parts(&self) -> Vec<SourcePart>;

    /// Whether [`set_paused`](SourcePanel::set_paused) takes `part` (a part's name, or
    /// a group of parts the source names, such as a Kafka topic); checked for every part
    /// of a request before any is changed. Default: no part can be paused.
    ///
    /// # Errors
    ///
    /// Why `part` cannot be paused, in words.
    fn check_pause(&self, part: &str) -> Result<(), String> {
        Err(format!("this source cannot pause {part}"))
    }

    /// Pauses or resumes `part`, which [`check_pause`](SourcePanel::check_pause) took;
    /// returns whether that changed anything (the control surface then records it).
    /// Default: nothing.
    fn set_paused(&self, part: &str, paused: bool) -> bool {
        let _ = (part, paused);
        false
    }

    /// Given once, when the pipeline starts: where a source records the pauses made
    /// through its own API rather than the control surface (a Kafka partition paused
    /// from code), so that the pipeline's change log and metric count them too.
    /// Default: ignored, for a source with no such API.
    fn attach(&self, changes: PartChanges) {
        let _ = changes;
    }
}

/// The pipeline's record of changes, as a [`SourcePanel`] writes to it (see
/// [`SourcePanel::attach`]). Cheap to clone.
#[derive(Clone)]
pub struct PartChanges(pub(crate) std::sync::Arc<crate::control::changes::ChangeLog>);

impl std::fmt::Debug for PartChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PartChanges")
    }
}

impl PartChanges {
    /// Records that `part` was paused (`true`) or resumed, as `source.{part}.paused`
    /// in [`Pipeline::changes`](crate::Pipeline::changes), counted under
    /// `source.paused` in `longshore_control_changes_total`.
    pub fn paused(&self, part: &str, paused: bool) {
        self.0
            .record_counted_as("source.paused", &format!("source.{part}.paused"), !paused, paused);
    }
}
