//! Waiting in tests for an event, never for a fixed time; and a watchdog that ends a
//! hung test run. Included by each connector's tests (`#[path]`), not a crate.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

/// Waits until `done` holds, checking every 10 ms, for at most `timeout`.
pub async fn eventually(timeout: Duration, done: impl FnMut() -> bool) {
    eventually_explained(timeout, done, String::new).await;
}

/// As [`eventually`]; on failure, says what `explain()` says of the state then (nothing
/// when it is empty).
pub async fn eventually_explained(
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    explain: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            match explain() {
                said if said.is_empty() => panic!("condition not met within {timeout:?}"),
                said => panic!("condition not met within {timeout:?}: {said}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `value()` equals `expected`, for at most `timeout`; on failure, says what
/// it was last.
pub async fn eventually_eq<T: PartialEq + std::fmt::Debug>(
    timeout: Duration,
    mut value: impl FnMut() -> T,
    expected: T,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = value();
        if now == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {now:?}, not {expected:?}, after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ends the whole test process if dropped later than `limit` after arming: a hang (a
/// blocked runtime worker cannot be timed out from inside) fails the run at once, naming
/// the test, instead of holding CI until its own limit.
pub struct Watchdog(std::sync::mpsc::Sender<()>);

impl Watchdog {
    pub fn arm(limit: Duration) -> Self {
        let (disarm, armed) = std::sync::mpsc::channel::<()>();
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        std::thread::spawn(move || {
            if armed.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                eprintln!("{test} still running after {limit:?}: hung; ending the test run");
                std::process::exit(101);
            }
        });
        Watchdog(disarm)
    }
}
