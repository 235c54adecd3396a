//! A real Prometheus (Debian's package) for the dashboard tests: started on a loopback
//! port, scraping given targets, queried through its HTTP API. Included by each
//! connector's dashboard test (`#[path]`), next to the core's tests/common as `http`.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::http;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A tool from `scripts/test`'s install (or the PATH); the test fails, saying how to get
/// it, when it is missing: never a silent skip.
pub fn tool(name: &str) -> PathBuf {
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
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Percent-encodes a query parameter.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Evaluates `expr` now through Prometheus's HTTP API: its result series.
pub async fn query(prometheus: SocketAddr, expr: &str) -> Vec<serde_json::Value> {
    let (status, body) = http::get(prometheus, &format!("/api/v1/query?query={}", encode(expr))).await;
    assert_eq!(status, 200, "{expr}: {body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "success", "{expr}: {body}");
    answer["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Every PromQL expression of the dashboard, its variables set as Grafana would for "All".
pub fn dashboard_queries() -> Vec<(String, String)> {
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
                .replace("$consumergroup", ".*")
                .replace("$queue", ".*");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

/// Starts Prometheus scraping `targets` every second, with the alert rules loaded; its
/// address, and the folder of its data and log.
pub fn start_prometheus(targets: &[SocketAddr]) -> (Process, SocketAddr, PathBuf) {
    let dir = std::env::temp_dir().join(format!("longshore-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prometheus_addr = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{rules:?}]\nscrape_configs:\n  - job_name: longshore\n    static_configs:\n      - targets: [{targets}]\n",
            rules = repo().join("dashboards/alerts.yml"),
            targets = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", "),
        ),
    )
    .unwrap();
    let prometheus = Process(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts"),
    );

    (prometheus, prometheus_addr, dir)
}

/// Whether Prometheus's HTTP API answers yet.
pub async fn http_ok(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok() && http::get(addr, "/-/ready").await.0 == 200
}

/// Waits (a minute at most) until Prometheus answers and `ready` (a PromQL condition)
/// returns a series: the targets were scraped enough for the dashboard's windows.
pub async fn wait_until_scraped(prometheus: SocketAddr, ready: &str, dir: &Path) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus did not scrape enough ({ready}); see {}",
            dir.join("prometheus.log").display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if http_ok(prometheus).await && query(prometheus, ready).await.len() == 1 {
            return;
        }
    }
}

/// Asserts that every `(panel, expr)` returns data now, naming those that do not.
pub async fn assert_all_return_data(prometheus: SocketAddr, queries: &[(String, String)]) {
    let mut empty = Vec::new();
    for (panel, expr) in queries {
        if query(prometheus, expr).await.is_empty() {
            empty.push(format!("{panel}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "queries without data:\n{}", empty.join("\n"));
}

/// Serves longshore's registry on a loopback port, has a real Prometheus scrape it, and
/// waits (a minute at most) until each of the dashboard's queries that name `prefix`
/// (at least `at_least` of them) returns data: the panels of a connector whose source
/// runs in this process, its gauges read.
pub async fn assert_panels_show(prefix: &str, at_least: usize) {
    let queries: Vec<_> = dashboard_queries()
        .into_iter()
        .filter(|(_, expr)| expr.contains(prefix))
        .collect();
    assert!(
        queries.len() >= at_least,
        "dashboard read: {} queries of {prefix}",
        queries.len()
    );
    let metrics = longshore::metrics::MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (prometheus, addr, dir) = start_prometheus(&[metrics.local_addr()]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut empty = Vec::new();
        if http_ok(addr).await {
            for (panel, expr) in &queries {
                if query(addr, expr).await.is_empty() {
                    empty.push(format!("{panel}: {expr}"));
                }
            }
        } else {
            empty.push("prometheus not answering".to_owned());
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queries without data after 60 s (see {}):\n{}",
            dir.join("prometheus.log").display(),
            empty.join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    drop(prometheus);
    metrics.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
