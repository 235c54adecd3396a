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
