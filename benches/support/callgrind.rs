//! Instructions counted by callgrind over a benchmark's measured part: a count that
//! repeats within a few percent run to run, where times on these shared machines do not.
//! A child run under callgrind marks where its measured part starts ([`start`]: the
//! counts so far are dropped) and ends ([`end`]: what was counted since is written out),
//! by monitor commands sent through valgrind's `vgdb`; run natively, both marks do
//! nothing. Every thread is counted, a client library's own included, and so is work on a
//! timer, which callgrind's slower run gives more time to.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the environment of a child run under callgrind: its marks then act.
const COUNTED: &str = "LONGSHORE_BENCH_CALLGRIND";

/// How long a mark may take: `vgdb` reaches a process whose threads all wait in the
/// kernel through ptrace, which a container may forbid.
const MARK_TIMEOUT: Duration = Duration::from_secs(60);

/// Fails at once, before anything is measured, if callgrind and `vgdb` cannot be run.
pub(crate) fn require() {
    for tool in ["valgrind", "vgdb"] {
        let ran = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            ran.is_ok(),
            "{tool} cannot be run ({ran:?}): the benchmark counts instructions with callgrind \
             (Debian's package valgrind)"
        );
    }
}

/// The measured part starts: what callgrind counted so far is dropped.
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
    let mut vgdb = Command::new("vgdb")
        .arg(format!("--pid={}", std::process::id()))
        .arg(command)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run vgdb {command}: {error}"));
    let deadline = Instant::now() + MARK_TIMEOUT;
    loop {
        match vgdb.try_wait() {
            Ok(Some(status)) if status.success() => return,
            Ok(Some(status)) => panic!("vgdb {command} failed: {status}"),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = vgdb.kill();
                panic!("vgdb {command} did not finish within {MARK_TIMEOUT:?} (is ptrace allowed?)");
            }
        }
    }
}

/// Runs this same binary with `args` (and `envs`) under callgrind and returns the
/// instructions of its measured part, the one between [`start`] and [`end`]. The dump is
/// kept as `longshore-callgrind/<name>.1` in the temporary directory (replaced by the
/// next run of the same name), for `callgrind_annotate`.
pub(crate) fn instructions(name: &str, args: &[&str], envs: &[(&str, String)]) -> f64 {
    let dir = std::env::temp_dir().join("longshore-callgrind");
    std::fs::create_dir_all(&dir).expect("a folder for callgrind's files");
    let out = dir.join(name);
    // The first dump asked for is the file's first numbered one.
    let dump = PathBuf::from(format!("{}.1", out.display()));
    let _ = std::fs::remove_file(&dump);
    let out_arg = format!("--callgrind-out-file={}", out.display());
    let mut envs = envs.to_vec();
    envs.push((COUNTED, "1".to_owned()));
    let ran = std::panic::catch_unwind(|| {
        crate::support::run_wrapped(&["valgrind", "--tool=callgrind", &out_arg], args, &envs)
    });
    // The whole run's file goes (the dump holds the measured part), whatever happened.
    let _ = std::fs::remove_file(&out);
    if let Err(panic) = ran {
        std::panic::resume_unwind(panic);
    }
    let text = std::fs::read_to_string(&dump).unwrap_or_else(|error| {
        panic!(
            "no callgrind dump at {} ({error}): the child never ended its measured part",
            dump.display()
        )
    });
    eprintln!("callgrind: {args:?}: {}", dump.display());
    // `summary:` holds the dump's instruction count.
    text.lines()
        .find_map(|line| line.strip_prefix("summary:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no instruction count in the callgrind dump {}", dump.display()))
}
