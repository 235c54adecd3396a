//! A PostgreSQL server of its own for a test: `initdb` in a temporary folder, started on a
//! loopback port, stopped when dropped. PostgreSQL 15's binaries must be on PATH
//! (`scripts/test` checks).

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

use std::path::PathBuf;
use std::process::Command;

/// A PostgreSQL server of its own, stopped when dropped.
pub struct Postgres {
    dir: PathBuf,
    data: PathBuf,
    port: u16,
}

/// Servers started by this process so far: each gets a folder of its own.
static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs a PostgreSQL tool, as the `postgres` user when this runs as root (initdb refuses
/// root).
fn pg(tool: &str, args: &[&str]) {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut command = if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", tool]);
        command
    } else {
        Command::new(tool)
    };
    let output = command.args(args).output().unwrap_or_else(|error| {
        panic!("{tool} cannot run ({error}): PostgreSQL 15's binaries must be on PATH")
    });
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Postgres {
    pub fn start() -> Self {
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("longshore-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // World-writable for the postgres user when running as root; a test folder only.
        let _ = Command::new("chmod").args(["777"]).arg(&dir).status();
        let data = dir.join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        pg(
            "initdb",
            &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust"],
        );
        let postgres = Postgres { dir, data, port };
        postgres.run();
        postgres
    }

    /// Starts the server on its folder and port.
    fn run(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log");
        pg(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    /// Kills the server (`-m immediate`: no clean shutdown, as a crash) and starts it
    /// again on the same port, after `down`.
    pub fn crash_and_restart(&self, down: std::time::Duration) {
        pg(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
        std::thread::sleep(down);
        self.run();
    }

    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        pg(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}
