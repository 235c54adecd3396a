//! The example end to end: LocalStack (an SQS-compatible server) and a slow HTTP
//! endpoint, both on loopback, and the service binary itself, stopped with SIGTERM.

#[path = "../../../connectors/sqs/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_depth, client, create_queue, drain, localstack, send, unique, Watchdog, TEST_LIMIT};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};

/// What the endpoint saw: each body with its answers, and when it accepted each.
#[derive(Default)]
struct Seen {
    answers: HashMap<String, Vec<u16>>,
    accepted_at: Vec<Instant>,
}

/// A slow endpoint: 20 ms per call; asks every tenth message to come back later once
/// (503 with `Retry-After: 1`); refuses `bad` for good (400).
async fn endpoint(seen: Arc<Mutex<Seen>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let body = String::from_utf8_lossy(&body).into_owned();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let mut seen = seen.lock().unwrap();
                    let earlier = seen.answers.get(&body).map_or(0, Vec::len);
                    let status = match body.as_str() {
                        "bad" => 400,
                        _ if body.ends_with('7') && earlier == 0 => 503,
                        _ => 200,
                    };
                    seen.answers.entry(body).or_default().push(status);
                    if status == 200 {
                        seen.accepted_at.push(Instant::now());
                    }
                    let response = Response::builder()
                        .status(status)
                        .header("retry-after", "1")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    format!("http://{address}/enrich")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_message_under_the_rate_limit_and_stops_on_sigterm() {
    let _watchdog = Watchdog::arm(TEST_LIMIT);
    let client = client().await;
    let name = unique("worker");
    let queue = create_queue(&client, &name, &[]).await;
    let dlq = create_queue(&client, &format!("{name}-dlq"), &[]).await;
    let messages: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    send(
        &client,
        &queue,
        messages.iter().cloned().chain(["bad".to_owned()]),
        None,
    )
    .await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let endpoint = endpoint(seen.clone()).await;

    let rate = 40;
    let dir = std::env::temp_dir().join(format!("longshore-sqs-worker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let settings = dir.join("sqs-worker.toml");
    std::fs::write(
        &settings,
        format!(
            r#"
[pipeline]
name = "sqs-worker-test"
processors = {{ concurrency = 8, max_demand = 2 }}
rate_limit = {{ messages = {rate}, per = "1s" }}
retry = {{ max_attempts = 3, initial_backoff = "1s" }}
shutdown_deadline = "10s"

[source]
queue = "{queue}"
wait_time = "1s"

[app]
endpoint = "{endpoint}"
timeout = "5s"
dead_letter_queue = "{dlq}"

[metrics]
addr = "127.0.0.1:0"
"#
        ),
    )
    .unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_sqs-worker"))
        .arg("--config")
        .arg(&settings)
        .env("AWS_ENDPOINT_URL_SQS", &localstack().endpoint)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the worker starts");

    // Every message accepted, the bad one in the dead-letter queue.
    let dead = drain(&client, &dlq, 1, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().accepted_at.len() < 200 {
        assert!(Instant::now() < deadline, "not every message was delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    let stopped_at = Instant::now();
    let exit = worker.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(worker.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(exit.success(), "graceful stop: {exit:?}\n{log}");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(10),
        "stopped within its deadline"
    );

    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some("bad"));
    assert_depth(&client, &queue, (0, 0)).await;
    let seen = seen.lock().unwrap();
    for message in &messages {
        let answers = &seen.answers[message];
        let expected: &[u16] = if message.ends_with('7') {
            &[503, 200]
        } else {
            &[200]
        };
        assert_eq!(answers, expected, "{message}");
    }
    assert_eq!(seen.answers["bad"], [400], "a permanent failure is not retried");
    // Under the limit: after the first burst of `rate`, at most `rate` a second.
    let calls = seen.answers.values().map(Vec::len).sum::<usize>();
    let first = *seen.accepted_at.first().unwrap();
    let last = *seen.accepted_at.last().unwrap();
    let least = Duration::from_secs_f64((calls - rate) as f64 / rate as f64) - Duration::from_millis(100);
    assert!(
        last - first >= least,
        "{calls} calls in {:?}, limit {rate}/s",
        last - first
    );
    let _ = std::fs::remove_dir_all(&dir);
}
