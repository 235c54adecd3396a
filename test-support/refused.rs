//! A pipeline whose broker refuses its consumer for good (the queue or the consumer
//! deleted under it) ends on its own once the source's liveness fails, a minute on
//! (`longshore::source::Refusal`). Included by connectors' tests (`#[path]`), not a crate.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use longshore::Pipeline;

/// Waits for `pipeline`, refused since `since`, to end with `broker`'s refusal; its error.
pub async fn ends_refused(pipeline: Pipeline, broker: &str, since: Instant) -> String {
    let ended = tokio::time::timeout(Duration::from_secs(120), pipeline.wait())
        .await
        .expect("the pipeline ends on its own");
    let error = ended.expect_err("the pipeline fails").to_string();
    assert!(
        error.contains(&format!("{broker} has refused the consumer")),
        "{error}"
    );
    assert!(
        since.elapsed() >= Duration::from_secs(60),
        "after {:?}",
        since.elapsed()
    );
    error
}
