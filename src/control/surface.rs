//! The control surface: JSON endpoints on the metrics server that read and change running
//! pipelines, behind a bearer token. Off unless a [`ControlSurface`] is given to
//! [`MetricsServer::builder`](crate::metrics::MetricsServer::builder); the pipelines are
//! those put on the server with
//! [`MetricsServer::add_pipeline`](crate::metrics::MetricsServer::add_pipeline).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::Request;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::de::{Deserialize, Deserializer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::control::batching::{self, Batching};
use crate::control::changes::ChangeLog;
use crate::control::pause::PauseSwitch;
use crate::control::scaling::{self, Scaling};
use crate::control::watched::Watched;
use crate::error::BuildError;
use crate::failure::rate_limit::{RateLimit, RateLimits};
use crate::pipeline::StatsHandle;

/// The shortest token taken: a guessable token is no protection.
pub const MIN_TOKEN_LEN: usize = 16;

/// The control surface: `GET /control` (every pipeline's settings, counts and last
/// changes) and `PATCH /control/pipelines/{name}` (change settings, named as in the
/// configuration), each refused with 401 unless the request carries
/// `Authorization: Bearer <token>`. The token is compared in constant time; `/metrics`,
/// `/healthz` and `/readyz` stay open and grant nothing here.
///
/// A `PATCH` body takes any of these, all checked before any is applied:
///
/// ```json
/// { "paused": false,
///   "processors": { "concurrency": 8 },
///   "rate_limit": { "messages": 500, "per": "1s", "burst": 50 },
///   "batchers": { "db": { "concurrency": 2, "batch_size": 200, "batch_timeout": "250ms", "rate_limit": null } },
///   "source": { "pause": ["orders/3"], "resume": ["refunds"] } }
/// ```
///
/// (`null` removes a rate limit; a field left out stays as it is. `source` pauses and
/// resumes parts of the source, as its [`SourcePanel`](crate::source::SourcePanel)
/// names them: Kafka's `topic/partition`, or a whole `topic`.)
///
/// ```
/// use longshore::control::ControlSurface;
/// use longshore::metrics::MetricsServer;
/// use longshore::source::memory::MemorySource;
/// use longshore::{BoxError, Handler, Message, Pipeline};
///
/// struct Ignore;
/// impl Handler for Ignore {
///     type Item = u64;
///     type Metadata = ();
///     async fn handle_message(&self, _: &mut Message<u64>) -> Result<(), BoxError> {
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let surface = ControlSurface::new("a-long-random-secret-token")?;
/// let server = MetricsServer::builder("127.0.0.1:0".parse()?).control(surface).bind().await?;
/// let pipeline = Pipeline::builder(MemorySource::from_iter(0..100u64), Ignore).start()?;
/// server.add_pipeline(pipeline.control());
/// assert_eq!(ControlSurface::new("short").unwrap_err().to_string(), "invalid control.token: must be at least 16 characters, got 5");
/// pipeline.wait().await?;
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ControlSurface {
    /// The token's SHA-256: a request's is compared with it, so that neither the token
    /// nor its length shows in how long a comparison takes.
    token: Arc<[u8; 32]>,
}

impl std::fmt::Debug for ControlSurface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ControlSurface").finish_non_exhaustive()
    }
}

/// What the control routes share: the token, and the server's pipelines.
#[derive(Clone)]
struct Surface {
    surface: ControlSurface,
    pipelines: Watched,
}

impl ControlSurface {
    /// A surface that takes requests carrying `token`, of at least [`MIN_TOKEN_LEN`]
    /// characters (leading and trailing white space, a file's newline, dropped).
    ///
    /// # Errors
    ///
    /// A [`BuildError`] on `control.token` when the token is too short.
    pub fn new(token: impl AsRef<str>) -> Result<Self, BuildError> {
        let token = token.as_ref().trim_start_matches('\u{feff}').trim();
        // An HTTP header carries visible ASCII only: another token could never match.
        if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(BuildError::new(
                "control.token",
                format!("must be visible ASCII characters only, found {bad:?}"),
            ));
        }
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(BuildError::new(
                "control.token",
                format!(
                    "must be at least {MIN_TOKEN_LEN} characters, got {}",
                    token.chars().count()
                ),
            ));
        }
        Ok(ControlSurface {
            token: Arc::new(Sha256::digest(token.as_bytes()).into()),
        })
    }

    /// A surface whose token is read from the file at `path` (a Kubernetes Secret
    /// mounted as a file, say).
    ///
    /// # Errors
    ///
    /// A [`BuildError`] on `control.token_file` when the file cannot be read, or on
    /// `control.token` when its token is too short.
    pub fn from_token_file(path: &Path) -> Result<Self, BuildError> {
        let token = std::fs::read_to_string(path).map_err(|error| {
            BuildError::new(
                "control.token_file",
                format!("cannot read {}: {error}", path.display()),
            )
        })?;
        ControlSurface::new(token)
    }

    /// Whether `headers` carry the token, compared in constant time.
    pub(crate) fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some((scheme, given)) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().split_once(' '))
        else {
            return false;
        };
        // The scheme's name is case-insensitive (RFC 9110).
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let given: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        bool::from(given.ct_eq(&*self.token))
    }

    /// The surface's routes over `pipelines`, for the metrics server.
    pub(crate) fn routes(&self, pipelines: Watched) -> Router {
        Router::new()
            .route("/control", get(overview))
            .route("/control/pipelines/{name}", get(one).patch(change))
            .with_state(Surface {
                surface: self.clone(),
                pipelines,
            })
    }
}

/// A running pipeline's controls and counts, for the control surface; made by
/// [`Pipeline::control`](crate::Pipeline::control). Cheap to clone.
#[derive(Clone)]
pub struct Control {
    pub(crate) name: Arc<str>,
    pub(crate) scaling: Scaling,
    pub(crate) batching: Batching,
    pub(crate) rate_limits: RateLimits,
    pub(crate) pause: PauseSwitch,
    pub(crate) changes: Arc<ChangeLog>,
    pub(crate) stats: StatsHandle,
    /// What the stall watch finds stalled now.
    pub(crate) stalls: Arc<crate::pipeline::stall::Stalls>,
    /// The source's parts and their pauses, if it shows them.
    pub(crate) source: Option<Arc<dyn crate::source::SourcePanel>>,
    /// Gone once the pipeline's handle is dropped: then it leaves the server.
    pub(crate) running: std::sync::Weak<crate::metrics::health::PipelineHealth>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("name", &self.name)
            .field("stats", &self.stats.get())
            .finish_non_exhaustive()
    }
}

/// The most parts one `PATCH` may pause and resume.
const MAX_PARTS_PER_REQUEST: usize = 64;

/// A `PATCH` body: settings as the configuration names them.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    paused: Option<bool>,
    processors: Option<ProcessorsPatch>,
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<RateLimit>>,
    #[serde(default)]
    batchers: std::collections::BTreeMap<String, BatcherPatch>,
    source: Option<SourcePatch>,
}

/// Parts of the source to pause and resume, as its panel names them.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SourcePatch {
    #[serde(default)]
    pause: Vec<String>,
    #[serde(default)]
    resume: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessorsPatch {
    concurrency: usize,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatcherPatch {
    concurrency: Option<usize>,
    batch_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    batch_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<RateLimit>>,
}

/// A field given, `null` included: `Some(None)` removes, a field left out is `None`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl Control {
    /// Whether its pipeline's handle is still held: false once it is dropped (after
    /// `wait` or `shutdown` returned). A pipeline that ended and whose handle is still
    /// kept stays listed.
    pub(crate) fn is_running(&self) -> bool {
        self.running.strong_count() > 0
    }

    /// Checks every setting of `patch` against this pipeline, changing nothing.
    fn check(&self, patch: &Patch) -> Result<(), BuildError> {
        if let Some(processors) = &patch.processors {
            scaling::check("processors.concurrency", processors.concurrency)?;
        }
        if let Some(Some(limit)) = &patch.rate_limit {
            limit.validate("rate_limit")?;
        }
        for (name, batcher) in &patch.batchers {
            let field = |setting: &str| format!("batchers.{name}.{setting}");
            if self.batching.batch_size(name).is_none() {
                return Err(BuildError::new(
                    format!("batchers.{name}"),
                    "no batcher of that name",
                ));
            }
            if let Some(concurrency) = batcher.concurrency {
                scaling::check(&field("concurrency"), concurrency)?;
            }
            if batcher.batch_size == Some(0) {
                return Err(BuildError::at_least(field("batch_size"), 1, 0));
            }
            if let Some(timeout) = batcher.batch_timeout {
                batching::check_timeout(&field("batch_timeout"), timeout)?;
            }
            if let Some(Some(limit)) = &batcher.rate_limit {
                limit.validate(&field("rate_limit"))?;
            }
        }
        if let Some(parts) = &patch.source {
            // A request names few parts; each check below looks at the state before it.
            if parts.pause.len() + parts.resume.len() > MAX_PARTS_PER_REQUEST {
                return Err(BuildError::new(
                    "source",
                    format!("at most {MAX_PARTS_PER_REQUEST} parts in one request"),
                ));
            }
            if let Some(both) = parts.pause.iter().find(|name| parts.resume.contains(name)) {
                return Err(BuildError::new(
                    "source",
                    format!("{both} is both paused and resumed"),
                ));
            }
            for (field, names) in [("source.pause", &parts.pause), ("source.resume", &parts.resume)] {
                for name in names {
                    let Some(source) = &self.source else {
                        return Err(BuildError::new(
                            field,
                            "this pipeline's source shows no parts to pause",
                        ));
                    };
                    source
                        .check_pause(name)
                        .map_err(|why| BuildError::new(field, why))?;
                }
            }
        }
        Ok(())
    }

    /// Applies a checked patch.
    fn apply(&self, patch: Patch) -> Result<(), BuildError> {
        if let Some(processors) = patch.processors {
            self.scaling.set_processors(processors.concurrency)?;
        }
        if let Some(limit) = patch.rate_limit {
            self.rate_limits.set(limit)?;
        }
        for (name, batcher) in patch.batchers {
            if let Some(concurrency) = batcher.concurrency {
                self.scaling.set_batch_concurrency(&name, concurrency)?;
            }
            if let Some(size) = batcher.batch_size {
                self.batching.set_batch_size(&name, size)?;
            }
            if let Some(timeout) = batcher.batch_timeout {
                self.batching.set_batch_timeout(&name, timeout)?;
            }
            if let Some(limit) = batcher.rate_limit {
                self.rate_limits.set_batcher(&name, limit)?;
            }
        }
        if let (Some(parts), Some(source)) = (patch.source, &self.source) {
            for (names, paused) in [(parts.pause, true), (parts.resume, false)] {
                for name in names {
                    if source.set_paused(&name, paused) {
                        crate::source::PartChanges(self.changes.clone()).paused(&name, paused);
                    }
                }
            }
        }
        // Last: a resume after the rest, so that it runs with the new settings.
        match patch.paused {
            Some(true) => self.pause.pause(),
            Some(false) => self.pause.resume(),
            None => {}
        }
        Ok(())
    }

    /// The pipeline's settings, counts and last changes, as the surface shows them.
    pub(crate) fn to_json(&self) -> Value {
        let stats = self.stats.get();
        let batchers: serde_json::Map<String, Value> = self
            .batching
            .batchers
            .iter()
            .map(|(name, settings)| {
                let value = json!({
                    "concurrency": self.scaling.batch_concurrency(name),
                    "batch_size": settings.size(),
                    "batch_timeout": humantime::format_duration(settings.timeout()).to_string(),
                    "rate_limit": self.rate_limits.get_batcher(name),
                });
                (name.to_string(), value)
            })
            .collect();
        let changes: Vec<Value> = self
            .changes
            .list()
            .into_iter()
            .map(|change| {
                let at = change.at.duration_since(UNIX_EPOCH).unwrap_or_default();
                json!({
                    "at_unix_ms": u64::try_from(at.as_millis()).unwrap_or(u64::MAX),
                    "setting": change.setting,
                    "from": change.from,
                    "to": change.to,
                })
            })
            .collect();
        json!({
            "name": &*self.name,
            "paused": self.pause.is_paused(),
            "processors": { "concurrency": self.scaling.processors() },
            "rate_limit": self.rate_limits.get(),
            "batchers": batchers,
            "stats": {
                "received": stats.received,
                "successful": stats.successful,
                "failed": stats.failed,
                "redelivered": stats.redelivered,
                "retried": stats.retried,
                "dead_lettered": stats.dead_lettered,
                "released": stats.released,
                "in_flight": stats.in_flight,
                "max_in_flight": stats.max_in_flight,
                "demand": stats.demand,
            },
            "changes": changes,
        })
    }
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(json!({ "error": "a bearer token is required, and this one is not it" })),
    )
        .into_response()
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

async fn overview(State(surface): State<Surface>, headers: HeaderMap) -> Response {
    if !surface.surface.authorized(&headers) {
        return refused();
    }
    let pipelines: Vec<Value> = surface.pipelines.list().iter().map(Control::to_json).collect();
    axum::Json(json!({ "pipelines": pipelines })).into_response()
}

async fn one(State(surface): State<Surface>, UrlPath(name): UrlPath<String>, headers: HeaderMap) -> Response {
    if !surface.surface.authorized(&headers) {
        return refused();
    }
    match surface.pipelines.find(&name) {
        Some(control) => axum::Json(control.to_json()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no pipeline named {name}")),
    }
}

/// The largest PATCH body read: a request names at most a few dozen settings.
const MAX_BODY: usize = 64 * 1024;

async fn change(
    State(surface): State<Surface>,
    UrlPath(name): UrlPath<String>,
    request: Request,
) -> Response {
    // The token before the body: an unauthenticated client gets nothing read for it.
    if !surface.surface.authorized(request.headers()) {
        return refused();
    }
    let body = match axum::body::to_bytes(request.into_body(), MAX_BODY).await {
        Ok(body) => body,
        Err(failed) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body unread (at most {MAX_BODY} bytes): {failed}"),
            )
        }
    };
    let Some(control) = surface.pipelines.find(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no pipeline named {name}"));
    };
    let patch: Patch = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(parse) => return error(StatusCode::BAD_REQUEST, format!("invalid body: {parse}")),
    };
    if let Err(invalid) = control.check(&patch).and_then(|()| control.apply(patch)) {
        return error(StatusCode::BAD_REQUEST, invalid);
    }
    axum::Json(control.to_json()).into_response()
}
