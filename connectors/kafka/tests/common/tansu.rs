//! A tansu broker (a Kafka-protocol broker written in Rust) as a separate process on a
//! loopback port, so that it outlives the consumer processes a test kills. Shared by the
//! tests and the benchmark.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../../test-support/ports.rs"]
mod ports;
pub use ports::free_port;

/// A running broker, stopped when dropped.
pub struct Tansu {
    child: Child,
    port: u16,
    storage: String,
    /// Where it runs: the folder of its SQLite file.
    dir: PathBuf,
    /// The port it tells clients to connect to: its own, or a proxy's in front of it.
    advertised: u16,
    authentication: bool,
    pub bootstrap: String,
}

/// Storage in a SQLite file in the broker's working folder (tansu reads the path of a
/// sqlite:// URL relative to it).
const SQLITE: &str = "sqlite://tansu.db";

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
        Tansu::start_with(SQLITE, dir)
    }

    fn start_with(storage: &str, dir: &std::path::Path) -> Tansu {
        let port = free_port();
        Tansu::start_on(port, port, storage, dir, false)
    }

    /// Starts a broker on `port` that tells clients to connect to `advertised` (a TLS
    /// proxy in front of it), keeping its data in a SQLite file in `dir`. With
    /// `authentication`, clients must log in with SASL/SCRAM as a user made by
    /// [`create_user`] in the same `dir`.
    pub fn start_behind(port: u16, advertised: u16, dir: &std::path::Path, authentication: bool) -> Tansu {
        Tansu::start_on(port, advertised, SQLITE, dir, authentication)
    }

    fn start_on(
        port: u16,
        advertised: u16,
        storage: &str,
        dir: &std::path::Path,
        authentication: bool,
    ) -> Tansu {
        Tansu {
            child: spawn(port, advertised, storage, dir, authentication),
            port,
            storage: storage.to_owned(),
            dir: dir.to_owned(),
            advertised,
            authentication,
            bootstrap: format!("127.0.0.1:{port}"),
        }
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port and storage;
    /// returns once it listens.
    pub fn restart(&mut self, down_for: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        self.child = spawn(
            self.port,
            self.advertised,
            &self.storage,
            &self.dir,
            self.authentication,
        );
    }
}

/// Adds the SASL/SCRAM-SHA-512 user `name` to the broker data in `dir`, through a broker
/// that needs no login (tansu adds users only for a client already logged in).
pub fn create_user(dir: &std::path::Path, name: &str, password: &str) {
    let port = free_port();
    let broker = Tansu::start_on(port, port, SQLITE, dir, false);
    let out = Command::new(binary())
        .args(["user", "create", "--broker", &format!("tcp://127.0.0.1:{port}")])
        .args(["--mechanism", "scram512", name, password])
        .output()
        .expect("tansu user create runs");
    assert!(
        out.status.success(),
        "tansu user create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(broker);
}

/// Starts tansu on `port` with `storage` and waits until it listens.
fn spawn(port: u16, advertised: u16, storage: &str, dir: &std::path::Path, authentication: bool) -> Child {
    let binary = binary();
    assert!(
        binary.exists(),
        "tansu not found at {}: run scripts/test (it installs tansu 0.6.0 under ~/.cache), \
         or set LONGSHORE_TANSU",
        binary.display()
    );
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{advertised}");
    let mut child = Command::new(&binary)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ])
        .args(authentication.then_some("--authentication"))
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
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    create_topic_with(&config, topic, partitions);
}

/// As [`create_topic`], with a client made from `config` (TLS, SASL, ...).
pub fn create_topic_with(config: &rdkafka::ClientConfig, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let admin: AdminClient<DefaultClientContext> = config.create().expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A broker just started may not answer its first request in time (a loaded
    // machine): asked again, up to three times. A topic that an unanswered request made
    // is there when asked again.
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(20)));
    for attempt in 1..=3 {
        let results = runtime.block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &options,
        ));
        match results {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(_) => {}
                        Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) if attempt > 1 => {}
                        Err((topic, error)) => panic!("cannot create topic {topic}: {error}"),
                    }
                }
                return;
            }
            Err(error) if attempt < 3 => eprintln!("create_topics not answered ({error}); asking again"),
            Err(error) => panic!("create_topics not answered three times: {error}"),
        }
    }
}
