//! Instructions counted by callgrind over a benchmark's measured part only: the same
//! count run after run, where times on these shared machines are noisy. A child run
//! under callgrind marks where its measured part starts ([`start`]: the counts so far
//! are dropped) and ends ([`end`]: what was counted since is written out), by monitor
//! commands sent through valgrind's `vgdb`; run natively, both marks do nothing. Every
//! thread is counted, a client library's own included.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Set in the environment of a child run under callgrind: its marks then act.
const COUNTED: &str = "LONGSHORE_BENCH_CALLGRIND";

/// The measured part starts: what callgrind counted so far (start-up, connecting,
/// joining a group) is dropped.
pub(crate) fn start() {
    monitor("zero");
}

/// The measured part ends: callgrind writes what it counted since [`start`].
pub(crate) fn end() {
    monitor("dump");
}

/// Sends a callgrind monitor command to this process, through valgrind's gdbserver
/// (`vgdb`), and waits until it is carried out; nothing when not counted.
fn monitor(command: &str) {
    if std::env::var_os(COUNTED).is_none() {
        return;
    }
    let status = std::process::Command::new("vgdb")
        .arg(format!("--pid={}", std::process::id()))
        .arg(command)
        .stdout(std::process::Stdio::null())
        .status();
    assert!(
        status.as_ref().is_ok_and(std::process::ExitStatus::success),
        "vgdb {command} failed: {status:?}"
    );
}

/// Runs this same binary with `args` (and `envs`) under callgrind and returns the
/// instructions of its measured part, the one between [`start`] and [`end`].
pub(crate) fn instructions(args: &[&str], envs: &[(&str, String)]) -> f64 {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!("longshore-callgrind-{}-{run}", std::process::id()));
    let out_arg = format!("--callgrind-out-file={}", out.display());
    let mut envs = envs.to_vec();
    envs.push((COUNTED, "1".to_owned()));
    crate::support::run_wrapped(&["valgrind", "--tool=callgrind", &out_arg], args, &envs);
    // The dump `end` asked for is the file's first numbered one.
    let dump = PathBuf::from(format!("{}.1", out.display()));
    let text = std::fs::read_to_string(&dump)
        .unwrap_or_else(|error| panic!("no callgrind dump at {} ({error}): the child never ended its measured part", dump.display()));
    // The whole run's file goes; the dump is kept for `callgrind_annotate`.
    let _ = std::fs::remove_file(&out);
    eprintln!("callgrind: {args:?}: {}", dump.display());
    // `summary:` holds the dump's instruction count.
    text.lines()
        .find_map(|line| line.strip_prefix("summary:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no instruction count in the callgrind dump {}", dump.display()))
}
