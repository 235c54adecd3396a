//! `/topology`: the live page of the server's pipelines (one HTML file, no external
//! assets: it works offline), and `/topology.json`, the feed it reads each second.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::feed::{self, Feeds};
use crate::control::watched::Watched;

const PAGE: &str = include_str!("topology.html");

#[derive(Clone)]
struct Page {
    pipelines: Watched,
    feeds: Arc<Feeds>,
    /// Whether the control surface is on: the page then asks for a token.
    control: bool,
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
        })
}

async fn page() -> impl IntoResponse {
    // The page changes nothing; its controls go through the token-protected `/control`.
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE))
}

async fn topology(State(page): State<Page>) -> Response {
    let families = feed::gather();
    let pipelines: Vec<_> = page
        .pipelines
        .list()
        .iter()
        .map(|control| page.feeds.view(control, &families))
        .collect();
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({ "control": page.control, "pipelines": pipelines })),
    )
        .into_response()
}
