//! Test support: a plain HTTP/1.1 GET over a real socket, reading `docs/metrics.md`, and
//! checking the order messages finished in.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The prefixes of the connectors' own series, each checked by its connector's tests
/// (against `docs/metrics.md` and the dashboard).
pub const CONNECTOR_PREFIXES: [&str; 7] = [
    "longshore_kafka_",
    "longshore_sqs_",
    "longshore_file_",
    "longshore_postgres_",
    "longshore_redis_",
    "longshore_nats_",
    "longshore_rabbitmq_",
];

/// `GET path` on `addr`: the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, &[], "").await
}

/// `method path` on `addr` with `headers` and `body`: the status code and the body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = exchange(addr, method, path, headers, body).await;
    (status, body)
}

/// `GET path` on `addr`: the status code, the response's head (status line and
/// headers) and the body.
pub async fn get_with_head(addr: SocketAddr, path: &str) -> (u16, String, String) {
    exchange(addr, "GET", path, &[], "").await
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("the server accepts");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    // To the end of the body its length gives (some servers keep the connection open
    // whatever the request asked), else to the end of the stream.
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = stream.read(&mut chunk).await.unwrap();
        response.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&response);
        let complete = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
            head.lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .is_some_and(|length| body.len() >= length)
        });
        if read == 0 || complete {
            break;
        }
    }
    let response = String::from_utf8(response).expect("a text response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, head.to_owned(), body.to_owned())
}

/// The metrics documented in `docs/metrics.md`: name to type.
pub fn documented_metrics() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    doc.lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix("`longshore_")?.strip_suffix('`')?;
            Some((format!("longshore_{name}"), cells.next()?.to_owned()))
        })
        .collect()
}

/// The metrics of a Prometheus text exposition: name to type, from its `# TYPE` lines.
pub fn exposed_metrics(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// The value of the sample `series` (name with its labels, as exposed), if present.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Asserts that per key and batcher, messages finished in the order sent: `finished`
/// gives each message's key, batcher, acknowledgement order and sequence number.
pub fn assert_finished_in_order(finished: impl IntoIterator<Item = (u64, Option<String>, u64, usize)>) {
    type ByKey = HashMap<(u64, Option<String>), Vec<(u64, usize)>>;
    let mut by_key = ByKey::new();
    for (key, batcher, acknowledged, seq) in finished {
        by_key
            .entry((key, batcher))
            .or_default()
            .push((acknowledged, seq));
    }
    for ((key, batcher), mut acks) in by_key {
        acks.sort_unstable();
        let seqs: Vec<usize> = acks.into_iter().map(|(_, seq)| seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} of batcher {batcher:?} finished out of order: {seqs:?}"
        );
    }
}
