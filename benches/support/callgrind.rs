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

/// What callgrind counted over a child run's measured part, in all its threads.
pub(crate) struct Counts {
    pub(crate) instructions: f64,
    /// Calls of the C allocator's entry points (`malloc`, `calloc`, `realloc` and the
    /// aligned ones), through which Rust's allocations and C libraries' alike go.
    #[allow(dead_code)] // the Kafka benchmark reports it, the core's does not
    pub(crate) allocations: f64,
}

/// The allocator's entry points, as callgrind names them.
const ALLOCATING: [&str; 6] = [
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
];

/// Runs this same binary with `args` (and `envs`) under callgrind and returns the
/// counts of its measured part, the one between [`start`] and [`end`]. The dump is
/// kept as `longshore-callgrind/<name>.1` in the temporary directory (replaced by the
/// next run of the same name), for `callgrind_annotate`.
pub(crate) fn counts(name: &str, args: &[&str], envs: &[(&str, String)]) -> Counts {
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
    let instructions = text
        .lines()
        .find_map(|line| line.strip_prefix("summary:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no instruction count in the callgrind dump {}", dump.display()));
    Counts {
        instructions,
        allocations: allocator_calls(&text),
    }
}

/// The calls of [`ALLOCATING`] functions in a callgrind dump: each call site is a
/// `cfn=` line naming the callee (`(id) name` the first time, `(id)` after), then a
/// `calls=<count> ...` line.
fn allocator_calls(dump: &str) -> f64 {
    let mut names = std::collections::HashMap::new();
    let mut callee_allocates = false;
    let mut calls = 0u64;
    for line in dump.lines() {
        if let Some(callee) = line.strip_prefix("cfn=") {
            let (id, name) = match callee.split_once(' ') {
                Some((id, name)) => {
                    names.insert(id.to_owned(), name.to_owned());
                    (id, Some(name))
                }
                None => (callee, None),
            };
            let name = name.or_else(|| names.get(id).map(String::as_str));
            callee_allocates = name.is_some_and(|name| ALLOCATING.contains(&name));
        } else if let Some(fn_name) = line.strip_prefix("fn=") {
            // A function's first mention may be as the caller: its name is given there.
            if let Some((id, name)) = fn_name.split_once(' ') {
                names.insert(id.to_owned(), name.to_owned());
            }
        } else if let Some(count) = line.strip_prefix("calls=") {
            if callee_allocates {
                calls += count
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    calls as f64
}
