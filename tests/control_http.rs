//! The control surface over a real socket: refused without its token or with a wrong
//! one, changing nothing then; with it, changes apply to the running pipeline, all of a
//! request or none of it.

mod common;

use std::time::Duration;

use longshore::control::ControlSurface;
use longshore::metrics::MetricsServer;
use longshore::source::memory::MemorySource;
use longshore::{BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors};
use serde_json::Value;

const TOKEN: &str = "test-token-0123456789abcdef";

struct Sink;

impl Handler for Sink {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, _: &mut Message<u64>) -> Result<(), BoxError> {
        Ok(())
    }

    async fn handle_batch(&self, _: &mut [Message<u64>], _: &BatchInfo) -> Result<(), BoxError> {
        Ok(())
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|error| panic!("{error}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_surface_takes_only_requests_with_its_token_and_applies_a_request_whole() {
    let surface = ControlSurface::new(TOKEN).unwrap();
    let server = MetricsServer::builder("127.0.0.1:0".parse().unwrap())
        .control(surface)
        .bind()
        .await
        .unwrap();
    let (source, sender) = MemorySource::channel(100);
    let pipeline = Pipeline::builder(source, Sink)
        .name("control-http")
        .processors(Processors::new(2))
        .batcher(Batcher::new("db").batch_size(10))
        .start()
        .unwrap();
    server.add_pipeline(pipeline.control());
    let scaling = pipeline.scaling();
    let addr = server.local_addr();
    let bearer = format!("Bearer {TOKEN}");
    let with_token = [("Authorization", bearer.as_str())];
    let patch = |headers: &'static [(&'static str, &'static str)], body: &'static str| {
        common::request(addr, "PATCH", "/control/pipelines/control-http", headers, body)
    };

    // No token, a wrong one, another scheme, the token with a byte more or less: refused.
    let wrong = [
        vec![],
        vec![("Authorization", "Bearer not-the-token-at-all-0000")],
        vec![("Authorization", "Basic dGVzdDp0ZXN0")],
        vec![("Authorization", "Bearer test-token-0123456789abcdef0")],
        vec![("Authorization", "Bearer test-token-0123456789abcde")],
        vec![("Authorization", TOKEN)],
    ];
    for headers in &wrong {
        let (status, body) = common::request(addr, "GET", "/control", headers, "").await;
        assert_eq!(status, 401, "{headers:?}: {body}");
        assert!(
            !body.contains("control-http"),
            "nothing shown without the token: {body}"
        );
        let (status, _) = common::request(
            addr,
            "PATCH",
            "/control/pipelines/control-http",
            headers,
            r#"{"processors": {"concurrency": 7}}"#,
        )
        .await;
        assert_eq!(status, 401, "{headers:?}");
    }
    assert_eq!(scaling.processors(), 2, "a refused request changes nothing");
    assert!(pipeline.changes().is_empty());
    // The open endpoints stay open, and grant nothing here.
    assert_eq!(common::get(addr, "/metrics").await.0, 200);

    let (status, body) = common::request(addr, "GET", "/control", &with_token, "").await;
    assert_eq!(status, 200, "{body}");
    let overview = json(&body);
    let shown = &overview["pipelines"][0];
    assert_eq!(shown["name"], "control-http");
    assert_eq!(shown["processors"]["concurrency"], 2);
    assert_eq!(shown["batchers"]["db"]["batch_size"], 10);
    assert_eq!(shown["paused"], false);

    let (status, body) = common::request(
        addr,
        "PATCH",
        "/control/pipelines/control-http",
        &with_token,
        r#"{"processors": {"concurrency": 3}, "paused": true,
            "rate_limit": {"messages": 500, "per": "1s", "burst": 50},
            "batchers": {"db": {"batch_size": 25, "batch_timeout": "250ms", "concurrency": 2}}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let after = json(&body);
    assert_eq!(after["processors"]["concurrency"], 3);
    assert_eq!(after["paused"], true);
    assert_eq!(after["rate_limit"]["messages"], 500);
    assert_eq!(after["batchers"]["db"]["batch_timeout"], "250ms");
    assert_eq!(scaling.processors(), 3);
    assert_eq!(scaling.batch_concurrency("db"), Some(2));
    assert_eq!(pipeline.batching().batch_size("db"), Some(25));
    assert!(pipeline.pause_switch().is_paused());
    let settings: Vec<String> = pipeline.changes().into_iter().map(|c| c.setting).collect();
    assert_eq!(
        settings,
        [
            "processors.concurrency",
            "rate_limit",
            "batchers.db.concurrency",
            "batchers.db.batch_size",
            "batchers.db.batch_timeout",
            "paused"
        ]
    );

    // One invalid setting: nothing of the request applies.
    let invalid: [(&str, &str, u16); 10] = [
        (
            r#"{"processors": {"concurrency": 5}, "source": {"pause": ["orders/1"], "resume": ["orders/1"]}}"#,
            "invalid source: orders/1 is both paused and resumed",
            400,
        ),
        (
            r#"{"processors": {"concurrency": 5}, "rate_limit": {"messages": 1, "per": "1000years"}}"#,
            "invalid rate_limit.per: must be at most 1day",
            400,
        ),
        (
            r#"{"processors": {"concurrency": 5}, "rate_limit": {"messages": 1, "per": "100s", "burst": 1000000000}}"#,
            "invalid rate_limit.burst",
            400,
        ),
        (
            r#"{"processors": {"concurrency": 5}, "source": {"pause": ["orders/1"]}}"#,
            "invalid source.pause: this pipeline's source shows no parts to pause",
            400,
        ),
        (
            r#"{"processors": {"concurrency": 5}, "batchers": {"db": {"batch_size": 0}}}"#,
            "invalid batchers.db.batch_size: must be at least 1, got 0",
            400,
        ),
        (
            r#"{"processors": {"concurrency": 5}, "batchers": {"db": {"batch_timeout": "100years"}}}"#,
            "invalid batchers.db.batch_timeout: must be from 1ms to 15m, got 100years",
            400,
        ),
        (
            r#"{"processors": {"concurrency": 5}, "batchers": {"nope": {"batch_size": 1}}}"#,
            "invalid batchers.nope: no batcher of that name",
            400,
        ),
        (
            r#"{"processors": {"concurrency": 5}, "procesors": 1}"#,
            "unknown field `procesors`",
            400,
        ),
        (
            r#"{"processors": {"concurrency": 0}}"#,
            "must be at least 1, got 0",
            400,
        ),
        (r#"not json"#, "invalid body", 400),
    ];
    for (body, says, code) in invalid {
        let (status, answer) = common::request(
            addr,
            "PATCH",
            "/control/pipelines/control-http",
            &with_token,
            body,
        )
        .await;
        assert_eq!(status, code, "{body}: {answer}");
        assert!(
            json(&answer)["error"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    assert_eq!(scaling.processors(), 3, "an invalid request changes nothing");
    let (status, _) = common::request(addr, "PATCH", "/control/pipelines/other", &with_token, "{}").await;
    assert_eq!(status, 404);

    // A rate limit removed with null; resumed, it drains.
    let (status, body) = patch(
        &[("Authorization", "Bearer test-token-0123456789abcdef")],
        r#"{"rate_limit": null, "paused": false}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["rate_limit"], Value::Null);
    for n in 0..100 {
        sender.send(n).await.unwrap();
    }
    drop(sender);
    let summary = tokio::time::timeout(Duration::from_secs(10), pipeline.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.successful, 100);
    server.shutdown().await;
}

#[tokio::test]
async fn without_a_surface_there_is_no_control_endpoint() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let bearer = format!("Bearer {TOKEN}");
    let (status, _) = common::request(
        server.local_addr(),
        "GET",
        "/control",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[test]
fn a_token_file_is_read_and_a_short_or_missing_one_refused() {
    let dir = std::env::temp_dir().join(format!("longshore-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    assert!(ControlSurface::from_token_file(&file).is_ok());
    std::fs::write(&file, "short\n").unwrap();
    assert_eq!(
        ControlSurface::from_token_file(&file).unwrap_err().to_string(),
        "invalid control.token: must be at least 16 characters, got 5"
    );
    let missing = dir.join("missing");
    assert!(ControlSurface::from_token_file(&missing)
        .unwrap_err()
        .to_string()
        .starts_with("invalid control.token_file: cannot read "));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What an unauthenticated or slow client can take from the server: no body is read
/// before the token is checked, a request's headers must come within the timeout, and
/// connections past the limit are closed at once, so that the probes on the same port
/// keep being answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reads_nothing_for_a_stranger_and_no_client_holds_the_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let server = MetricsServer::builder("127.0.0.1:0".parse().unwrap())
        .control(ControlSurface::new(TOKEN).unwrap())
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr();
    let pipeline = Pipeline::builder(MemorySource::channel(1).0, Sink)
        .name("control-slow")
        .start()
        .unwrap();
    server.add_pipeline(pipeline.control());

    // A PATCH announcing a body it never sends: refused on its headers alone.
    let mut stranger = TcpStream::connect(addr).await.unwrap();
    stranger
        .write_all(
            b"PATCH /control/pipelines/control-slow HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n{",
        )
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), stranger.read_exact(&mut answer))
        .await
        .expect("answered without the body")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");

    // The scheme's name in any case; a body over the limit with the token: refused.
    let lower = format!("bearer {TOKEN}");
    let (status, _) = common::request(
        addr,
        "GET",
        "/control/pipelines/control-slow",
        &[("Authorization", &lower)],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let bearer = format!("Bearer {TOKEN}");
    let huge = format!("{{\"processors\": 2, \"pad\": \"{}\"}}", "x".repeat(70_000));
    let (status, body) = common::request(
        addr,
        "PATCH",
        "/control/pipelines/control-slow",
        &[("Authorization", &bearer)],
        &huge,
    )
    .await;
    assert_eq!(status, 413, "{body}");

    // Half a request's headers: the connection is closed after the header timeout.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a client that never finished its headers still holds a connection"
    );

    // Idle connections up to the limit: the next is closed at once; once they go, the
    // probe is answered again.
    let mut idle = Vec::new();
    for _ in 0..256 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut over = TcpStream::connect(addr).await.unwrap();
    let _ = over.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut nothing = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), over.read_to_end(&mut nothing)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the connection past the limit was served: {:?}",
        String::from_utf8_lossy(&nothing)
    );
    drop(idle);
    let mut answered = false;
    for _ in 0..50 {
        // The server frees a slot once it sees its client gone: until then a probe is
        // closed unanswered, which fails the probe's own task, and is tried again.
        let mut probe = tokio::spawn(common::get(addr, "/healthz"));
        let answer = tokio::time::timeout(Duration::from_secs(1), &mut probe).await;
        // One still waiting gives its connection up, not to hold a slot meanwhile.
        probe.abort();
        if let Ok(Ok((200, _))) = answer {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the probe is answered once the idle clients went");

    // A client that sends requests and never reads what it is sent: its connection's
    // buffers fill, and the server's shutdown does not wait on it for ever.
    let mut deaf = TcpStream::connect(addr).await.unwrap();
    let requests = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20_000);
    let _ = tokio::time::timeout(Duration::from_secs(2), deaf.write_all(&requests)).await;
    drop(pipeline);
    let stopped = tokio::time::timeout(Duration::from_secs(15), server.shutdown()).await;
    assert!(
        stopped.is_ok(),
        "the shutdown waited on a client that does not read"
    );
    drop(deaf);
}

#[test]
fn a_token_no_header_can_carry_is_refused() {
    let error = ControlSurface::new("é-is-not-ascii-0123456789").unwrap_err();
    assert!(error.to_string().contains("visible ASCII"), "{error}");
    // A file's byte-order mark and newline are not part of the token.
    assert!(ControlSurface::new("\u{feff}0123456789abcdef\n").is_ok());
}
