//! What every benchmark binary shares: each case runs in a child process of its own (so
//! its peak RSS is its own), which reports one `RESULT` line of numbers.

use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

/// Runs this same binary with `args` (and `envs`) and returns the numbers of the
/// `RESULT` line it prints. `LONGSHORE_BENCH_WRAP` runs each child under a command, to
/// profile it: `LONGSHORE_BENCH_WRAP="perf stat -e context-switches"`.
pub(crate) fn run_child(args: &[&str], envs: &[(&str, String)]) -> Vec<f64> {
    let wrap = std::env::var("LONGSHORE_BENCH_WRAP").unwrap_or_default();
    let wrap: Vec<&str> = wrap.split_whitespace().collect();
    let (result, stderr) = run_wrapped(&wrap, args, envs);
    if !wrap.is_empty() {
        eprintln!("{args:?}\n{stderr}");
    }
    result
}

/// Runs this same binary under `wrap` (a command and its arguments; none: directly);
/// returns the numbers of its `RESULT` line, and what it wrote to stderr.
pub(crate) fn run_wrapped(wrap: &[&str], args: &[&str], envs: &[(&str, String)]) -> (Vec<f64>, String) {
    let exe = std::env::current_exe().expect("own path");
    let mut command = match wrap.split_first() {
        Some((program, wrap_args)) => {
            let mut command = Command::new(program);
            command.args(wrap_args).arg(exe);
            command
        }
        None => Command::new(exe),
    };
    let out = command
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|error| panic!("cannot run the bench child under {wrap:?}: {error}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("case {args:?} failed: {stderr}"));
    let result = line.split(' ').map(|x| x.parse().expect("a number")).collect();
    (result, stderr)
}

/// Prints the `RESULT` line a child reports to its parent.
pub(crate) fn report(values: &[f64]) {
    let values: Vec<String> = values.iter().map(f64::to_string).collect();
    println!("RESULT {}", values.join(" "));
}

/// This process's peak resident memory, in MiB.
#[allow(dead_code)] // not every benchmark reports it
pub(crate) fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// This process's CPU time so far, user and system, in seconds.
#[allow(dead_code)] // not every benchmark reports it
pub(crate) fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command (in parentheses, which may hold spaces), the fields from the
    // state on: utime and stime are the 12th and 13th, in clock ticks (USER_HZ, 100).
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// The runtime every measured case but Kafka's runs on: two workers, as many as the
/// machine's cores.
#[allow(dead_code)] // the Kafka benchmark sizes its own
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    runtime_with_workers(2)
}

/// A runtime of `workers` workers, for a case whose source keeps a core busy with a
/// thread of its own.
#[allow(dead_code)] // not every benchmark has such a source
pub(crate) fn runtime_with_workers(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Latency samples, in microseconds.
#[derive(Debug, Default)]
#[allow(dead_code)] // not every benchmark measures latency
pub(crate) struct Samples(Mutex<Vec<u32>>);

#[allow(dead_code)]
impl Samples {
    pub(crate) fn record(&self, since: Instant) {
        self.record_between(since, Instant::now());
    }

    /// Records the time from `since` to `now`.
    pub(crate) fn record_between(&self, since: Instant, now: Instant) {
        let micros = now
            .saturating_duration_since(since)
            .as_micros()
            .min(u32::MAX as u128) as u32;
        self.0.lock().unwrap().push(micros);
    }

    /// The `p` quantile; a run that was to sample latency and has no sample fails.
    pub(crate) fn percentile(&self, p: f64) -> f64 {
        let mut samples = self.0.lock().unwrap().clone();
        assert!(!samples.is_empty(), "no latency sample was taken");
        samples.sort_unstable();
        samples[((samples.len() - 1) as f64 * p) as usize] as f64
    }
}

/// Says when the `count`th message was handled: an event, not a poll of the pipeline's
/// stats, whose timer would wake the process a thousand times a second.
#[derive(Debug)]
#[allow(dead_code)] // not every benchmark waits for a count
pub(crate) struct Countdown {
    count: usize,
    handled: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

#[allow(dead_code)]
impl Countdown {
    pub(crate) fn new(count: usize) -> Self {
        Countdown {
            count,
            handled: std::sync::atomic::AtomicUsize::new(0),
            done: tokio::sync::Notify::new(),
        }
    }

    /// One more message handled.
    pub(crate) fn handled(&self) {
        if self.handled.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == self.count {
            self.done.notify_one();
        }
    }

    /// Returns once `count` messages were handled.
    pub(crate) async fn finished(&self) {
        self.done.notified().await;
    }
}

/// The middle value.
#[allow(dead_code)] // not every benchmark takes medians
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A connector benchmark's size from its arguments: under `cargo bench` (`--bench`)
/// `full` messages in 5 rounds; under `cargo test` a smoke run of 2,000 in one.
/// `LONGSHORE_BENCH_MESSAGES` sets the count, `LONGSHORE_BENCH_ROUNDS` the rounds.
#[allow(dead_code)] // the connectors' benchmarks
pub(crate) fn size(args: &[String], full: u64) -> (u64, usize) {
    let bench = args.iter().any(|a| a == "--bench");
    let count = std::env::var("LONGSHORE_BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(if bench { full } else { 2_000 });
    (count, rounds(bench))
}

/// The rounds of a benchmark: `LONGSHORE_BENCH_ROUNDS`, else 5 under `cargo bench` and
/// 1 in a smoke run; at least 1.
#[allow(dead_code)] // the core cases' and the connectors' benchmarks
pub(crate) fn rounds(bench: bool) -> usize {
    std::env::var("LONGSHORE_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if bench { 5 } else { 1 })
        .max(1)
}

/// Runs the cases `raw` and `longshore` (`--case <case> <url> <count>`, each reporting
/// its rate and peak RSS) in child processes, in `rounds` rounds whose order
/// alternates, and prints `BENCH case=<name> ratio=<median of the rounds' ratios>` with
/// both sides' median rates and peak RSS.
#[allow(dead_code)] // the connectors' benchmarks
pub(crate) fn raw_against_longshore(name: &str, url: &str, count: u64, rounds: usize) {
    let (mut ratios, mut raw_rates, mut our_rates, mut rss) =
        (Vec::new(), Vec::new(), Vec::new(), [0.0f64; 2]);
    for round in 0..rounds {
        let mut this = [0.0; 2];
        for turn in 0..2 {
            let at = (turn + round) % 2;
            let case = ["raw", "longshore"][at];
            let v = run_child(&["--case", case, url, &count.to_string()], &[]);
            this[at] = v[0];
            rss[at] = rss[at].max(v[1]);
        }
        raw_rates.push(this[0]);
        our_rates.push(this[1]);
        ratios.push(this[1] / this[0]);
    }
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = ratios.iter().copied().fold(0.0, f64::max);
    println!(
        "BENCH case={name} ratio={:.2} ratio_range={lowest:.2}-{highest:.2} msgs_per_s={:.0} raw_msgs_per_s={:.0} peak_rss_mb={:.1} raw_peak_rss_mb={:.1} messages={count} rounds={rounds}",
        median(ratios),
        median(our_rates),
        median(raw_rates),
        rss[1],
        rss[0],
    );
}

/// A do-nothing handler, counting each message down.
#[allow(dead_code)] // the connectors' benchmarks
pub(crate) struct Nothing<D, M>(
    std::sync::Arc<Countdown>,
    std::marker::PhantomData<fn() -> (D, M)>,
);

impl<D: Send + 'static, M: Send + 'static> longshore::Handler for Nothing<D, M> {
    type Item = D;
    type Metadata = M;

    async fn handle_message(
        &self,
        message: &mut longshore::Message<D, M>,
    ) -> Result<(), longshore::BoxError> {
        std::hint::black_box(message.data());
        self.0.handled();
        Ok(())
    }
}

/// Consumes `count` messages of `source` (which does not end) through `tasks`
/// processors of `max_demand` `demand` and the do-nothing handler, `producers` receives
/// at once, then shuts down (the last chunks acknowledged): how many succeeded. A
/// processor asks for more once 7/8 of its demand is free (`min_demand` an eighth), so
/// that fetches are nearly as full as the raw loops' fixed batches: a fetch's cost at
/// the server (a commit, a disk flush) is per fetch, not per message.
#[allow(dead_code)] // the connectors' benchmarks
pub(crate) async fn consume<S>(source: S, count: u64, tasks: usize, demand: usize, producers: usize) -> u64
where
    S: longshore::Source,
    S::Metadata: Sync,
{
    let countdown = std::sync::Arc::new(Countdown::new(count as usize));
    let handler = Nothing::<S::Data, S::Metadata>(countdown.clone(), std::marker::PhantomData);
    let pipeline = longshore::Pipeline::builder(source, handler)
        .processors(
            longshore::Processors::new(tasks)
                .max_demand(demand)
                .min_demand((demand / 8).max(1)),
        )
        .source_concurrency(producers)
        .start()
        .unwrap();
    countdown.finished().await;
    pipeline.shutdown().await.unwrap().successful
}

/// Takes every message and batch, and does nothing with them: the core cases' handler.
#[allow(dead_code)] // the core's benchmarks
pub(crate) struct Sink;

impl longshore::Handler for Sink {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, message: &mut longshore::Message<u64>) -> Result<(), longshore::BoxError> {
        std::hint::black_box(message.data());
        Ok(())
    }

    async fn handle_batch(
        &self,
        batch: &mut [longshore::Message<u64>],
        _: &longshore::BatchInfo,
    ) -> Result<(), longshore::BoxError> {
        std::hint::black_box(batch.len());
        Ok(())
    }
}
