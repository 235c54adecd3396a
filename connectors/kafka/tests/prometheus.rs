//! The dashboard and the alert rules against a real Prometheus (Debian's package), which
//! scrapes a real quickstart process and a Kafka pipeline on the mock cluster over
//! loopback: every PromQL expression of the dashboard must return data.

mod common;
#[path = "../../../tests/common/mod.rs"]
mod http;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{cluster, config, produce, Recorder};
use longshore::metrics::MetricsServer;
use longshore::{Pipeline, Processors};
use longshore_kafka::KafkaSource;

const WAIT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A tool from `scripts/test`'s install (or the PATH); the test fails, saying how to get
/// it, when it is missing: never a silent skip.
fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from(format!("/usr/bin/{name}"));
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .chain([path])
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| {
        panic!("{name} not found: scripts/test installs it (apt-get install -y prometheus)")
    })
}

/// Kills the child when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

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

/// Percent-encodes a query parameter.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Evaluates `expr` now through Prometheus's HTTP API: its result series.
async fn query(prometheus: SocketAddr, expr: &str) -> Vec<serde_json::Value> {
    let (status, body) = http::get(prometheus, &format!("/api/v1/query?query={}", encode(expr))).await;
    assert_eq!(status, 200, "{expr}: {body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "success", "{expr}: {body}");
    answer["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Every PromQL expression of the dashboard, its variables set as Grafana would for "All".
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("dashboards/longshore.json")).unwrap())
            .unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "15s")
                .replace("$pipeline", ".*")
                .replace("$consumergroup", ".*");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let _serial = common::serial().await;
    let queries = dashboard_queries();
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
    let kafka_metrics = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();

    let dir = std::env::temp_dir().join(format!("longshore-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prometheus_addr = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{rules:?}]\nscrape_configs:\n  - job_name: longshore\n    static_configs:\n      - targets: ['{quickstart_addr}', '{kafka}']\n",
            rules = repo().join("dashboards/alerts.yml"),
            kafka = kafka_metrics.local_addr(),
        ),
    )
    .unwrap();
    let _prometheus = Process(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts"),
    );

    // Both targets up, and enough scrapes for rates over the dashboard's window.
    let mut ready = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ready {
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus did not scrape both targets; see {}",
            dir.join("prometheus.log").display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let api_up = http_ok(prometheus_addr).await;
        ready = api_up
            && query(prometheus_addr, "sum(up) == 2 and count(count_over_time(longshore_kafka_consumergroup_lag[15s]) >= 5) > 0 and count(count_over_time(longshore_received_messages_total[15s]) >= 5) == 2")
                .await
                .len()
                == 1;
    }

    let mut empty = Vec::new();
    for (panel, expr) in &queries {
        if query(prometheus_addr, expr).await.is_empty() {
            empty.push(format!("{panel}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "queries without data:\n{}", empty.join("\n"));
    // Prometheus loaded the alert rules.
    let (status, rules) = http::get(prometheus_addr, "/api/v1/rules").await;
    assert_eq!(status, 200);
    assert!(rules.contains("LongshoreKafkaLagGrowing"), "{rules}");

    pipeline.shutdown().await.unwrap();
    kafka_metrics.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether Prometheus's HTTP API answers yet.
async fn http_ok(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok() && http::get(addr, "/-/ready").await.0 == 200
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
