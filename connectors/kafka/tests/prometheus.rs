//! The dashboard and the alert rules against a real Prometheus (Debian's package), which
//! scrapes a real quickstart process and a Kafka pipeline on the mock cluster over
//! loopback: every PromQL expression of the dashboard must return data.

mod common;
#[path = "../../../tests/common/mod.rs"]
mod http;
#[path = "../../../test-support/prometheus.rs"]
mod prometheus;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{cluster, config, produce, Recorder};
use longshore::metrics::MetricsServer;
use longshore::{Pipeline, Processors};
use longshore_kafka::KafkaSource;
use prometheus::{
    assert_all_return_data, dashboard_queries, free_port, repo, start_prometheus, tool, wait_until_scraped,
    Process,
};

/// The quickstart binary, built as a user would build it.
fn quickstart() -> PathBuf {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "quickstart"])
        .current_dir(repo())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the quickstart builds");
    // target/debug/deps/<this test> -> target/debug/quickstart
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().join("quickstart")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let _serial = common::serial().await;
    // The other connectors' panels are checked by their own tests.
    let others = http::CONNECTOR_PREFIXES
        .iter()
        .filter(|&&prefix| prefix != "longshore_kafka_");
    let queries: Vec<_> = dashboard_queries()
        .into_iter()
        .filter(|(_, expr)| !others.clone().any(|prefix| expr.contains(prefix)))
        .collect();
    assert!(queries.len() >= 20, "dashboard read: {} queries", queries.len());

    // A quickstart process that runs for as long as the test needs it.
    let quickstart_addr = free_port();
    let _quickstart = Process(
        Command::new(quickstart())
            .args(["--count", "1000000000", "--sink-latency-ms", "20"])
            .arg("--metrics-addr")
            .arg(quickstart_addr.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("the quickstart starts"),
    );

    // A Kafka pipeline, slow enough to keep a lag, in this process.
    let cluster = cluster("lagging", 2);
    let bootstrap = cluster.bootstrap_servers();
    produce(&bootstrap, "lagging", 2, 20_000, 10);
    let recorder = Arc::new(Recorder {
        delay: Some(Duration::from_millis(2)),
        ..Recorder::default()
    });
    let source = KafkaSource::new(
        config(&bootstrap, "dashboards", "lagging").lag_interval(Duration::from_millis(500)),
    )
    .unwrap();
    let pipeline = Pipeline::builder(source, recorder)
        .name("kafka")
        .processors(Processors::new(2).max_demand(10).min_demand(5))
        .start()
        .unwrap();
    // A consumer of a broker that is not there, for the client errors panel.
    let nowhere = free_port().to_string();
    let unreachable = Pipeline::builder(
        KafkaSource::new(config(&nowhere, "unreachable", "lagging")).unwrap(),
        Arc::new(Recorder::default()),
    )
    .name("unreachable")
    .start()
    .unwrap();
    let kafka_metrics = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();

    let (_prometheus, prometheus_addr, dir) =
        start_prometheus(&[quickstart_addr, kafka_metrics.local_addr()]);
    // Both targets up, and enough scrapes for rates over the dashboard's window (of three
    // pipelines: the quickstart, the lagging one and the unreachable one).
    let ready = "sum(up) == 2 and count(count_over_time(longshore_kafka_consumergroup_lag[15s]) >= 5) > 0 \
        and count(count_over_time(longshore_kafka_client_errors_total[15s]) >= 5) > 0 \
        and count(count_over_time(longshore_received_messages_total[15s]) >= 5) == 3";
    wait_until_scraped(prometheus_addr, ready, &dir).await;

    assert_all_return_data(prometheus_addr, &queries).await;
    // Prometheus loaded the alert rules.
    let (status, rules) = http::get(prometheus_addr, "/api/v1/rules").await;
    assert_eq!(status, 200);
    assert!(rules.contains("LongshoreKafkaLagGrowing"), "{rules}");
    assert!(rules.contains("LongshoreKafkaClientErrors"), "{rules}");

    pipeline.shutdown().await.unwrap();
    unreachable.shutdown().await.unwrap();
    kafka_metrics.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dashboards = repo().join("dashboards");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let output = Command::new(tool("promtool"))
            .args(args)
            .current_dir(&dashboards)
            .output()
            .expect("promtool runs");
        assert!(
            output.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
