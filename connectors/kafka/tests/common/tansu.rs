//! A tansu broker (a Kafka-protocol broker written in Rust) as a separate process on a
//! loopback port, so that it outlives the consumer processes a test kills. Shared by the
//! tests and the benchmark.

#![allow(dead_code, unreachable_pub)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running broker, stopped when dropped.
pub struct Tansu {
    child: Child,
    port: u16,
    storage: String,
    /// Where it runs: the folder of its SQLite file.
    dir: PathBuf,
    pub bootstrap: String,
}

/// Where scripts/test installs tansu (with its SQLite storage); `LONGSHORE_TANSU`
/// overrides it.
fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("LONGSHORE_TANSU") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/tansu-0.6.0-libsql/bin/tansu")
}

impl Tansu {
    /// Starts a broker with in-memory storage on a free loopback port. Fails the test,
    /// saying why, when tansu is missing or does not start: never a silent skip.
    pub fn start() -> Tansu {
        Tansu::start_with("memory://tansu/", &std::env::temp_dir())
    }

    /// Starts a broker keeping its data in a SQLite file in `dir`: it survives
    /// [`Tansu::restart`].
    pub fn start_persistent(dir: &std::path::Path) -> Tansu {
        // tansu reads the path of a sqlite:// URL relative to its working folder.
        Tansu::start_with("sqlite://tansu.db", dir)
    }

    fn start_with(storage: &str, dir: &std::path::Path) -> Tansu {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = spawn(port, storage, dir);
        Tansu {
            child,
            port,
            storage: storage.to_owned(),
            dir: dir.to_owned(),
            bootstrap: format!("127.0.0.1:{port}"),
        }
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port and storage;
    /// returns once it listens.
    pub fn restart(&mut self, down_for: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        self.child = spawn(self.port, &self.storage, &self.dir);
    }
}

/// Starts tansu on `port` with `storage` and waits until it listens.
fn spawn(port: u16, storage: &str, dir: &std::path::Path) -> Child {
    let binary = binary();
    assert!(
        binary.exists(),
        "tansu not found at {}: run scripts/test (it installs tansu 0.6.0 under ~/.cache), \
         or set LONGSHORE_TANSU",
        binary.display()
    );
    let url = format!("tcp://127.0.0.1:{port}");
    let mut child = Command::new(&binary)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", storage, "--silent"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start tansu at {}: {e}", binary.display()));
    let bootstrap = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&bootstrap).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("tansu ({storage}) exited at start: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "tansu did not listen on {bootstrap} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates `topic` with `partitions` partitions through the admin API.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("create_topics answered");
    for result in results {
        result.unwrap_or_else(|(topic, error)| panic!("cannot create topic {topic}: {error}"));
    }
}
