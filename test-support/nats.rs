//! A NATS server with JetStream of its own for a test: `nats-server` (Debian's package,
//! which `scripts/test` installs) on a free loopback port, its store in a temporary
//! folder so that a crash and restart keeps the streams; killed when dropped.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "ports.rs"]
mod ports;
use ports::free_port;

/// A NATS server of its own, killed when dropped.
pub struct Nats {
    dir: PathBuf,
    port: u16,
    child: Child,
}

/// Servers started by this process so far: each gets a folder of its own.
static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Nats {
    pub fn start() -> Self {
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("longshore-nats-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let child = spawn(&dir, port);
        Nats { dir, port, child }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, as a crash) and starts it again on the same port and
    /// store, after `down`.
    pub fn crash_and_restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = spawn(&self.dir, self.port);
    }
}

fn spawn(dir: &std::path::Path, port: u16) -> Child {
    let mut child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("nats-server cannot run ({error}): scripts/test installs it"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            let mut info = [0u8; 4];
            if stream.read_exact(&mut info).is_ok() && &info == b"INFO" {
                return child;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server on port {port} exited at start: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "nats-server on port {port} not up within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
