//! The dashboard's SQS panels against a real Prometheus (Debian's package) scraping an SQS
//! pipeline on LocalStack over loopback: each of their PromQL expressions returns data.

mod common;
#[path = "../../../tests/common/mod.rs"]
mod http;
#[path = "../../../test-support/prometheus.rs"]
mod prometheus;

use std::time::Duration;

use common::{client, config, create_queue, send, unique, Watchdog, TEST_LIMIT};
use longshore::metrics::MetricsServer;
use longshore::{BoxError, Handler, Pipeline, Processors};
use longshore_sqs::{SqsMessage, SqsMetadata, SqsSource};
use prometheus::{assert_all_return_data, dashboard_queries, start_prometheus, wait_until_scraped};

/// Slow enough to keep a backlog for the whole test.
struct Slow;

impl Handler for Slow {
    type Item = longshore_sqs::Bytes;
    type Metadata = SqsMetadata;
    async fn handle_message(&self, _: &mut SqsMessage) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sqs_panel_query_returns_data_from_a_real_prometheus() {
    let _watchdog = Watchdog::arm(TEST_LIMIT);
    let queries: Vec<_> = dashboard_queries()
        .into_iter()
        .filter(|(_, expr)| expr.contains("longshore_sqs_"))
        .collect();
    assert!(
        queries.len() >= 5,
        "dashboard read: {} SQS queries",
        queries.len()
    );

    let client = client().await;
    let name = unique("dashboard");
    let url = create_queue(&client, &name, &[]).await;
    send(&client, &url, (0..2_000).map(|i| i.to_string()), None).await;
    let source = SqsSource::connect(config(&name)).await.unwrap();
    let pipeline = Pipeline::builder(source, Slow)
        .name("sqs")
        .processors(Processors::new(2).max_demand(10))
        .start()
        .unwrap();
    let metrics = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (_prometheus, prometheus_addr, dir) = start_prometheus(&[metrics.local_addr()]);

    // Enough scrapes for rates over the dashboard's window.
    let ready = "count(count_over_time(longshore_sqs_messages_visible[15s]) >= 5) > 0 \
                 and count(count_over_time(longshore_sqs_api_calls_total[15s]) >= 5) > 0";
    wait_until_scraped(prometheus_addr, ready, &dir).await;

    assert_all_return_data(prometheus_addr, &queries).await;
    let (status, rules) = http::get(prometheus_addr, "/api/v1/rules").await;
    assert_eq!(status, 200);
    assert!(rules.contains("LongshoreSqsOldestMessageAgeHigh"), "{rules}");

    pipeline.shutdown().await.unwrap();
    metrics.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
