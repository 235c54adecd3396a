//! A PostgreSQL server of its own for a test: `initdb` in a temporary folder, started on a
//! loopback port, stopped when dropped. PostgreSQL 15's binaries must be on PATH
//! (`scripts/test` checks).

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

use std::path::PathBuf;
use std::process::Command;

#[path = "ports.rs"]
mod ports;
use ports::free_port;

/// A PostgreSQL server of its own, stopped when dropped.
pub struct Postgres {
    dir: PathBuf,
    data: PathBuf,
    port: u16,
}

/// Servers started by this process so far: each gets a folder of its own.
static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs a PostgreSQL tool, as the `postgres` user when this runs as root (initdb refuses
/// root); fails the test if it fails.
fn pg(tool: &str, args: &[&str]) {
    succeeded(&format!("{tool} {args:?}"), &pg_output(tool, args));
}

/// Fails the test with what `doing` printed, unless it succeeded.
fn succeeded(doing: &str, output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{doing}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs a PostgreSQL tool as [`pg`] does, and returns what it did.
fn pg_output(tool: &str, args: &[&str]) -> std::process::Output {
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
    command.args(args).output().unwrap_or_else(|error| {
        panic!("{tool} cannot run ({error}): PostgreSQL 15's binaries must be on PATH")
    })
}

/// How many ports a server is tried on before its start fails the test.
const PORT_TRIES: usize = 5;

impl Postgres {
    pub fn start() -> Self {
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("longshore-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // World-writable for the postgres user when running as root; a test folder only.
        let _ = Command::new("chmod").args(["777"]).arg(&dir).status();
        let data = dir.join("data");
        pg(
            "initdb",
            &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust"],
        );
        // A port picked free may be taken meanwhile (initdb takes seconds, and tests
        // run side by side): then another is tried. Made only once it runs, the server
        // is never stopped unstarted.
        let log = dir.join("postgres.log");
        for tried in 1..=PORT_TRIES {
            let logged = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
            let port = free_port();
            let output = start_on(&data, &dir, port);
            if output.status.success() {
                return Postgres { dir, data, port };
            }
            let said = std::fs::read(&log).unwrap_or_default();
            let taken =
                String::from_utf8_lossy(&said[logged.min(said.len())..]).contains("Address already in use");
            assert!(
                taken && tried < PORT_TRIES,
                "pg_ctl start on port {port} (try {tried}): {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        unreachable!("the last try's failure fails the test")
    }

    /// Starts the server on its folder and port.
    fn run(&self) {
        let output = start_on(&self.data, &self.dir, self.port);
        succeeded(&format!("pg_ctl start on port {}", self.port), &output);
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

/// Starts the server of `data` on `port`, its socket and log in `dir`.
fn start_on(data: &std::path::Path, dir: &std::path::Path, port: u16) -> std::process::Output {
    let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.display());
    let log = dir.join("postgres.log");
    pg_output(
        "pg_ctl",
        &[
            "-D",
            data.to_str().unwrap(),
            "-o",
            &options,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ],
    )
}

impl Drop for Postgres {
    fn drop(&mut self) {
        pg(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}
