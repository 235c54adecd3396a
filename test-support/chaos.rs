//! The chaos tests' shared parts: their sizes, the consumer processes they kill, and
//! the file those processes append what they handled to. Included by each connector's
//! tests (`#[path]`), not a crate.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// A size of the run: the test command's shortened one, unless `scripts/chaos` sets
/// the full one through `variable`.
pub fn setting(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A consumer process, killed if the test ends first.
pub struct Consumer(pub Child);

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines written so far, duplicates included.
pub fn lines(output: &Path) -> usize {
    let bytes = std::fs::read(output).unwrap_or_default();
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// Payloads handled so far, with how many times each.
pub fn handled(output: &Path) -> BTreeMap<usize, usize> {
    let text = std::fs::read_to_string(output).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        *counts
            .entry(line.parse::<usize>().expect("whole lines only"))
            .or_insert(0) += 1;
    }
    counts
}

pub fn wait_for(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a kill-and-restart run counted.
#[derive(Debug)]
pub struct Counted {
    /// The bound the last consumer reported (`max_in_flight=` on its stdout).
    pub max_in_flight: usize,
    pub unique: usize,
    pub lost: usize,
    pub duplicates: usize,
}

/// Starts consumers with `start`, each appending what it handled to `output`; kills
/// `kills` of them with SIGKILL, each at a random moment within its slice of the
/// stream; then runs one until the broker says everything is done (`quiescent`: the
/// group committed to the end of every partition, the queue empty with nothing in
/// flight) and stops it with SIGTERM, which it must survive cleanly. Only then counts
/// `output` against `0..produced`: a message the broker counts done but nobody handled
/// shows as lost, instead of as a wait that never ends.
pub fn kill_restart_and_count(
    produced: usize,
    kills: usize,
    output: &Path,
    mut quiescent: impl FnMut() -> bool,
    mut start: impl FnMut() -> Consumer,
) -> Counted {
    let wait = Duration::from_secs(600);
    for kill in 1..=kills {
        let mut consumer = start();
        let slice = produced / (kills + 2);
        let target = (kill - 1) * slice + slice / 2 + fastrand::usize(0..=slice / 2);
        wait_for(wait, "consumer progress", || lines(output) >= target);
        consumer.0.kill().expect("SIGKILL");
        consumer.0.wait().unwrap();
    }
    let mut consumer = start();
    wait_for(wait, "the broker to count every message done", &mut quiescent);
    stop_and_count(&mut consumer, produced, output)
}

impl Counted {
    /// Prints case `case`'s CHAOS line for `kills` kills of a consumer, and asserts:
    /// nothing lost, every message handled, and duplicates within what the consumer
    /// could hold at each kill (its in-flight bound).
    pub fn assert_kills(&self, case: &str, produced: usize, kills: usize) {
        self.assert_kills_within(case, produced, kills, self.max_in_flight);
    }

    /// [`Counted::assert_kills`] for a source that may replay more than was in flight
    /// at a kill: at most `bound` a kill.
    pub fn assert_kills_within(&self, case: &str, produced: usize, kills: usize, bound: usize) {
        println!(
            "CHAOS case={case} produced={produced} handled_unique={} lost={} duplicates={} inflight_bound={bound} kills={kills}",
            self.unique, self.lost, self.duplicates
        );
        assert_eq!(self.lost, 0, "{case}: messages lost");
        assert_eq!(self.unique, produced, "{case}: messages handled");
        assert!(
            self.duplicates <= kills * bound,
            "{case}: duplicates {} over the bound {kills} × {bound}",
            self.duplicates
        );
    }

    /// Prints case `case`'s CHAOS line after a SIGTERM that took `took`, and asserts:
    /// nothing lost, nothing handled twice.
    pub fn assert_graceful(&self, case: &str, produced: usize, took: Duration) {
        println!(
            "CHAOS case={case} produced={produced} handled_unique={} lost={} duplicates={} inflight_bound={} exit_s={:.2}",
            self.unique,
            self.lost,
            self.duplicates,
            self.max_in_flight,
            took.as_secs_f64()
        );
        assert_eq!(self.lost, 0, "{case}: messages lost");
        assert_eq!(self.duplicates, 0, "{case}: duplicates after a graceful stop");
    }
}

/// Stops `consumer` with SIGTERM (it must exit cleanly), then counts `output` against
/// `0..produced`, with the bound the consumer reported.
pub fn stop_and_count(consumer: &mut Consumer, produced: usize, output: &Path) -> Counted {
    terminate(consumer);
    let mut stdout = String::new();
    std::io::Read::read_to_string(consumer.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let max_in_flight = stdout
        .lines()
        .find_map(|l| l.strip_prefix("max_in_flight="))
        .and_then(|n| n.parse().ok())
        .expect("the consumer reports its bound");
    let counts = handled(output);
    let total: usize = counts.values().sum();
    Counted {
        max_in_flight,
        unique: counts.len(),
        lost: (0..produced).filter(|p| !counts.contains_key(p)).count(),
        duplicates: total - counts.len(),
    }
}

/// Starts a consumer process: `program` with `args` and `envs`, its stdout kept for its
/// bound, its log appended beside `output`.
pub fn start_consumer(program: &str, args: &[&str], envs: &[(&str, &str)], output: &Path) -> Consumer {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output.with_extension("log"))
        .unwrap();
    let child = std::process::Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("the consumer process starts");
    Consumer(child)
}

/// Sends SIGTERM and waits for the process, which must exit cleanly; how long it took.
pub fn terminate(consumer: &mut Consumer) -> Duration {
    let sent = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &consumer.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = consumer.0.wait().unwrap();
    assert!(exit.success(), "graceful stop: {exit:?}");
    sent.elapsed()
}

/// SIGTERM under load: starts a consumer, stops it with SIGTERM once it handled `at`
/// lines, and asserts it exited cleanly within `deadline`; then runs another to the end
/// and counts. What the first did not finish must come back to the second.
pub fn sigterm_then_finish(
    produced: usize,
    at: usize,
    deadline: Duration,
    output: &Path,
    quiescent: impl FnMut() -> bool,
    mut start: impl FnMut() -> Consumer,
) -> (Duration, Counted) {
    let mut consumer = start();
    wait_for(Duration::from_secs(600), "consumer progress", || {
        lines(output) >= at
    });
    let took = terminate(&mut consumer);
    assert!(
        took <= deadline,
        "SIGTERM: exited after {took:?}, deadline {deadline:?}"
    );
    (
        took,
        kill_restart_and_count(produced, 0, output, quiescent, start),
    )
}

/// A folder of its own for one case, and the file its consumer processes append to;
/// removed when dropped.
pub struct Case {
    pub dir: std::path::PathBuf,
    pub output: std::path::PathBuf,
}

impl Case {
    pub fn new(connector: &str, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("longshore-{connector}-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Case {
            output: dir.join("handled.txt"),
            dir,
        }
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
