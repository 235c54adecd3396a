//! `/topology`: the live page of the server's pipelines (one HTML file, no external
//! assets: it works offline), and `/topology.json`, the feed it reads each second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::feed::{self, Feeds};
use crate::control::watched::Watched;

const PAGE: &str = include_str!("topology.html");

/// One feed body serves every request for this long: a second client, or a tab left
/// open, costs the pipeline nothing more (the page refreshes each second).
const FEED_KEPT: Duration = Duration::from_millis(500);

/// The page may not be framed by another site (clickjacking its controls), nor its
/// feed read as anything but what it says it is.
const NO_FRAMING: [(header::HeaderName, &str); 4] = [
    (header::CACHE_CONTROL, "no-store"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

#[derive(Clone)]
struct Page {
    pipelines: Watched,
    feeds: Arc<Feeds>,
    /// Whether the control surface is on: the page then asks for a token.
    control: bool,
    /// The last feed body and when it was made; one request makes it while the others
    /// wait for it.
    last: Arc<tokio::sync::Mutex<Option<(Instant, Bytes)>>>,
}

/// The page's routes over `pipelines`.
pub(crate) fn routes(pipelines: Watched, control: bool) -> Router {
    Router::new()
        .route("/topology", get(page))
        .route("/topology.json", get(topology))
        .with_state(Page {
            pipelines,
            feeds: Arc::default(),
            control,
            last: Arc::default(),
        })
}

async fn page() -> impl IntoResponse {
    // The page changes nothing; its controls go through the token-protected `/control`.
    (NO_FRAMING, Html(PAGE))
}

async fn topology(State(page): State<Page>) -> Response {
    let mut last = page.last.lock().await;
    let body = match &*last {
        Some((at, body)) if at.elapsed() < FEED_KEPT => body.clone(),
        _ => {
            // Dated when its figures are read; read off the runtime's workers (a
            // source's parts take locks its own threads hold).
            let at = Instant::now();
            let made = page.clone();
            let body = match tokio::task::spawn_blocking(move || feed_body(&made).to_string()).await {
                Ok(body) => Bytes::from(body),
                Err(error) => {
                    return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
                        .into_response();
                }
            };
            *last = Some((at, body.clone()));
            body
        }
    };
    drop(last);
    (NO_FRAMING, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn feed_body(page: &Page) -> serde_json::Value {
    let families = feed::gather();
    let running = page.pipelines.list();
    page.feeds.keep_only(running.iter().map(|control| &*control.name));
    let pipelines: Vec<_> = running
        .iter()
        .map(|control| page.feeds.view(control, &families))
        .collect();
    json!({ "control": page.control, "pipelines": pipelines })
}
