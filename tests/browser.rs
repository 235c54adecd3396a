//! The topology page in a real browser: Debian's Chromium, headless, driven over
//! WebDriver (chromedriver) against a running pipeline. The page shows every stage with
//! the pipeline's own figures, highlights a deliberately slowed batcher, offers no
//! control without the token, and with it a click on "+1 processor" adds a processor
//! (seen in `/metrics`). It saves a screenshot: the README's picture.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use longshore::control::ControlSurface;
use longshore::metrics::MetricsServer;
use longshore::source::memory::MemorySource;
use longshore::{BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors};
use serde_json::{json, Value};

const TOKEN: &str = "browser-test-token-0123456789";

/// Quick messages; batches of 10 that take 20 ms each.
struct SlowSink;

impl Handler for SlowSink {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, _: &mut Message<u64>) -> Result<(), BoxError> {
        Ok(())
    }

    async fn handle_batch(&self, _: &mut [Message<u64>], _: &BatchInfo) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

/// chromedriver on a port of its own; killed when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
    session: String,
    _profile: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs: scripts/test installs Debian's chromium and chromium-driver");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let profile =
            TempDir(std::env::temp_dir().join(format!("longshore-chromium-{}", std::process::id())));
        let mut driver = Driver {
            child,
            addr,
            session: String::new(),
            _profile: profile,
        };
        // Ready once it answers on its port (it says so on /status).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let (_, body) = common::get(addr, "/status").await;
                if serde_json::from_str::<Value>(&body).is_ok_and(|s| s["value"]["ready"] == true) {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,700",
                format!("--user-data-dir={}", driver._profile.0.display()),
            ],
        }}}});
        let session = driver.call("POST", "/session", Some(capabilities)).await;
        driver.session = session["sessionId"].as_str().expect("a session").to_owned();
        driver
    }

    /// A WebDriver command; its `value`.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers = [("Content-Type", "application/json")];
        let (status, answer) = common::request(self.addr, method, path, &headers, &body).await;
        let answer: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer["value"].clone()
    }

    async fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    /// The elements matching `css`, by their WebDriver ids.
    async fn find(&self, css: &str) -> Vec<String> {
        let found = self
            .session(
                "POST",
                "/elements",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e.as_object()
                    .unwrap()
                    .values()
                    .next()
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// Runs `script` in the page with `css` as its argument. The page redraws itself each
    /// second: an element is looked up and used in one go, never held across a redraw.
    async fn script(&self, script: &str, css: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [css] })),
        )
        .await
    }

    async fn text(&self, css: &str) -> Option<String> {
        let text = self
            .script(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                css,
            )
            .await;
        text.as_str().map(str::to_owned)
    }

    async fn shown(&self, css: &str) -> bool {
        self.script("return document.querySelector(arguments[0]) !== null;", css)
            .await
            .as_bool()
            .unwrap()
    }

    async fn click(&self, css: &str) {
        let clicked = self
            .script(
                "const e = document.querySelector(arguments[0]); if (e) e.click(); return e !== null;",
                css,
            )
            .await;
        assert_eq!(clicked, true, "no {css} to click");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self
            .find(css)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {css}"));
        self.session(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Waits until `css` matches, at most `within`.
    async fn wait_for(&self, css: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.shown(css).await {
            assert!(tokio::time::Instant::now() < deadline, "{css} never shown");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `css`'s text is `text`, at most 10 s.
    async fn wait_for_text(&self, css: &str, text: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let shown = self.text(css).await;
            if shown.as_deref() == Some(text) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} shows {shown:?}, not {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let png = self.session("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .expect("a base64 PNG");
        std::fs::write(path, png).unwrap();
    }
}

fn number(text: &str) -> u64 {
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_pipeline_highlights_the_slow_batcher_and_adds_a_processor_with_the_token() {
    let server = MetricsServer::builder("127.0.0.1:0".parse().unwrap())
        .control(ControlSurface::new(TOKEN).unwrap())
        .bind()
        .await
        .unwrap();
    let pipeline = Pipeline::builder(MemorySource::from_iter(0..u64::MAX), SlowSink)
        .name("orders")
        .processors(Processors::new(2).max_demand(10))
        .batcher(Batcher::new("db").batch_size(10).concurrency(1))
        .start()
        .unwrap();
    server.add_pipeline(pipeline.control());
    let stats = pipeline.stats();
    let driver = Driver::start().await;
    let page = format!("http://{}/topology", server.local_addr());
    driver.session("POST", "/url", Some(json!({ "url": page }))).await;

    // Every stage is drawn, and the slowed batcher is the one highlighted.
    driver
        .wait_for("section[data-pipeline=orders]", Duration::from_secs(10))
        .await;
    for stage in [
        "producer",
        "processor",
        "batcher",
        "batch_processor",
        "acknowledger",
    ] {
        assert!(
            driver.shown(&format!("[data-stage={stage}]")).await,
            "{stage} drawn"
        );
    }
    driver
        .wait_for(
            ".stage.limit[data-stage=batch_processor][data-batcher=db]",
            Duration::from_secs(10),
        )
        .await;
    let reason = driver.text("[data-figure=bottleneck]").await.unwrap();
    assert!(
        reason.contains("batcher db's batch processors") && reason.contains("% busy"),
        "{reason}"
    );
    // No token yet: no control is offered.
    assert!(!driver.shown("#processors-plus").await);
    assert!(!driver.shown("#pause-orders").await);

    // A wrong token is refused, and still no control is offered.
    driver.type_into("#token", "not-the-token-0000000000").await;
    driver.click("#token-save").await;
    driver.wait_for_text("#token-state", "token refused").await;
    assert!(!driver.shown("#processors-plus").await);

    // The right token: the controls appear; "+1 processor" adds one, as /metrics says.
    driver
        .session(
            "POST",
            &format!("/element/{}/clear", driver.find("#token").await[0]),
            Some(json!({})),
        )
        .await;
    driver.type_into("#token", TOKEN).await;
    driver.click("#token-save").await;
    driver.wait_for("#processors-plus", Duration::from_secs(5)).await;
    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/topology.png");
    driver.screenshot(&screenshot).await;
    driver.click("#processors-plus").await;
    let series = r#"longshore_stage_tasks{batcher="",pipeline="orders",stage="processor"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = common::get(server.local_addr(), "/metrics").await;
        if common::sample(&metrics, series) == Some(3.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series} never 3");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pipeline.scaling().processors(), 3);

    // Paused, the counts settle: the page shows the pipeline's own, within a refresh.
    driver.click("#pause-orders").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = stats.get();
        let shown = (
            driver
                .text("section[data-pipeline=orders] .summary [data-figure=received]")
                .await,
            driver
                .text("section[data-pipeline=orders] .summary [data-figure=successful]")
                .await,
            driver.text("[data-stage=processor] [data-figure=tasks]").await,
        );
        let settled = now.in_flight == 0 && stats.get() == now;
        if settled {
            if let (Some(received), Some(successful), Some(tasks)) = &shown {
                if (number(received), number(successful), number(tasks)) == (now.received, now.successful, 3)
                {
                    break;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page shows {shown:?}, the pipeline {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(pipeline.pause_switch().is_paused());

    driver.session("DELETE", "", None).await;
    drop(driver);
    pipeline.shutdown().await.unwrap();
    server.shutdown().await;
}
