//! A RabbitMQ server of its own for a test: `rabbitmq-server` (Debian's package, which
//! `scripts/test` installs) run in the foreground as its own Erlang node, on free
//! loopback ports, its store in a temporary folder so that a crash and restart keeps the
//! durable queues and persistent messages; killed when dropped.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "ports.rs"]
mod ports;
use ports::free_port;

/// A RabbitMQ server of its own, killed when dropped.
pub struct RabbitMq {
    dir: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
    child: Child,
}

/// Servers started by this process so far: each gets a node and a folder of its own.
static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl RabbitMq {
    pub fn start() -> Self {
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("longshore-rabbitmq-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // No plugins: the management plugin alone doubles the start.
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let (port, dist_port) = (free_port(), free_port());
        let node = format!("longshore-{id}@localhost");
        let child = spawn(&dir, &node, port, dist_port);
        RabbitMq {
            dir,
            node,
            port,
            dist_port,
            child,
        }
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` (guest may log in over loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// What the server logged so far (its log file).
    pub fn log(&self) -> String {
        let dir = self.dir.join("log");
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|e| e == "log"))
            .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
            .collect()
    }

    /// The server's Erlang node, for `rabbitmqctl -n`.
    pub fn node(&self) -> String {
        self.node.clone()
    }

    /// Kills the server (SIGKILL, as a crash) and starts it again on the same ports,
    /// node and store, after `down`.
    pub fn crash_and_restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = spawn(&self.dir, &self.node, self.port, self.dist_port);
    }
}

fn spawn(dir: &std::path::Path, node: &str, port: u16, dist_port: u16) -> Child {
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let mut child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
        // The script then runs the Erlang VM in its own place (exec), so that killing
        // the child kills the server, not a shell in front of it.
        .env("RUNNING_UNDER_SYSTEMD", "true")
        .env("RABBITMQ_NODENAME", node)
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env(
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "-kernel inet_dist_use_interface {127,0,0,1}",
        )
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins"))
        .env("RABBITMQ_PID_FILE", dir.join("pid"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("rabbitmq-server cannot run ({error}): scripts/test installs it"));
    // Up once it answers the AMQP header with a Connection.Start frame (type 1); it
    // opens its listener last in its boot.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut frame = [0u8; 1];
            if stream.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
                && stream.read_exact(&mut frame).is_ok()
                && frame[0] == 1
            {
                return child;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            panic!("rabbitmq-server on port {port} exited at start ({status}):\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "rabbitmq-server on port {port} not up within 60 s (log: {})",
            dir.join("server.log").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RabbitMq {
    /// The messages of `queue` ready for delivery and delivered but not acknowledged,
    /// as the server counts them (`rabbitmqctl list_queues`; a passive declare tells
    /// only the ready ones). `None` while the queue does not exist.
    pub fn counts(&self, queue: &str) -> Option<(u64, u64)> {
        let output = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .args(["-n", &self.node, "-q", "list_queues", "--no-table-headers"])
            .args(["name", "messages_ready", "messages_unacknowledged"])
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            output.status.success(),
            "rabbitmqctl list_queues failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            if fields.next()? != queue {
                return None;
            }
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        })
    }
}
