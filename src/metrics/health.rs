//! Readiness: the pipelines of the process, each running or not, each with its source
//! connected or not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio_util::sync::CancellationToken;

/// One pipeline, as `/readyz` sees it.
pub(crate) struct PipelineHealth {
    /// Cancelled when the shutdown starts, or once the source is exhausted.
    pub(crate) stop: CancellationToken,
    pub(crate) source_ready: Box<dyn Fn() -> bool + Send + Sync>,
    /// `false` once the pipeline failed (a stage, the acknowledger or the source).
    pub(crate) alive: Box<dyn Fn() -> bool + Send + Sync>,
    pub(crate) name: String,
    /// What the stall watch finds stalled now.
    pub(crate) stalls: Arc<crate::pipeline::stall::Stalls>,
    /// Whether a stall fails liveness.
    pub(crate) stall_fails_liveness: bool,
}

impl PipelineHealth {
    fn ready(&self) -> bool {
        !self.stop.is_cancelled() && (self.source_ready)() && (self.alive)()
    }
}

fn pipelines() -> &'static Mutex<Vec<Weak<PipelineHealth>>> {
    static PIPELINES: Mutex<Vec<Weak<PipelineHealth>>> = Mutex::new(Vec::new());
    &PIPELINES
}

/// Adds a pipeline to the process's readiness; it counts for as long as the returned
/// `Arc` lives.
pub(crate) fn register(health: PipelineHealth) -> Arc<PipelineHealth> {
    let health = Arc::new(health);
    let mut pipelines = pipelines().lock().unwrap_or_else(|p| p.into_inner());
    pipelines.retain(|p| p.strong_count() > 0);
    pipelines.push(Arc::downgrade(&health));
    health
}

/// The pipelines alive now.
fn live() -> Vec<Arc<PipelineHealth>> {
    let pipelines = pipelines().lock().unwrap_or_else(|p| p.into_inner());
    pipelines.iter().filter_map(Weak::upgrade).collect()
}

/// Ready: at least one pipeline, and every pipeline running with its source ready.
pub(crate) fn ready() -> bool {
    let live = live();
    !live.is_empty() && live.iter().all(|p| p.ready())
}

static FAILED: AtomicBool = AtomicBool::new(false);

/// A pipeline of the process failed: `/healthz` fails from now until the process exits
/// (which is what a failed pipeline's `wait` leads a service's `main` to), so that
/// Kubernetes restarts it even if it lingers.
pub(crate) fn failed() {
    FAILED.store(true, Ordering::Relaxed);
}

/// Alive: no pipeline of the process has failed, and none has a stage stalled where a
/// stall fails liveness.
pub(crate) fn alive() -> bool {
    !FAILED.load(Ordering::Relaxed)
        && live()
            .iter()
            .all(|p| (p.alive)() && (!p.stall_fails_liveness || !p.stalls.a_stage_is_stalled()))
}

/// The stalled stages of every pipeline, one line each: `/healthz`'s detail.
pub(crate) fn stalls() -> Vec<String> {
    let mut lines = Vec::new();
    for pipeline in live() {
        for (stage, idle) in pipeline.stalls.list() {
            lines.push(format!(
                "stalled: {} {stage}, no progress for {}",
                pipeline.name,
                humantime::format_duration(idle)
            ));
        }
    }
    lines
}
