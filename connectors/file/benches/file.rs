//! The file source against hand-written readers of the same file, in the same run, each
//! in a process of its own, in alternated rounds (median ratios):
//!
//! - `raw`: the fastest loop there is: blocks of 256 KiB read with tokio, split at each
//!   newline into `Bytes` without a copy, each record looked at once;
//! - `chunked`: the same reader feeding two worker tasks chunks of 64 records over
//!   bounded channels, the hand-written pipeline of longshore's shape;
//! - `longshore`: `FileSource` (checkpoint included) under a pipeline of two processors.
//!
//! Records of 100 bytes. Prints `BENCH case=file vs_raw=<x> vs_chunked=<x> ...`;
//! `LONGSHORE_BENCH_MESSAGES` sets the record count (default 2,000,000; under
//! `cargo test` a short smoke run).

#[path = "../../../benches/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use longshore::{BoxError, Handler, Message, Pipeline, Processors};
use longshore_file::{FileConfig, FileMetadata, FileSource};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

const BLOCK: usize = 256 * 1024;
const CHUNK: usize = 64;
const WORKERS: usize = 2;

struct Look;

impl Handler for Look {
    type Item = Bytes;
    type Metadata = FileMetadata;

    async fn handle_message(&self, message: &mut Message<Bytes, FileMetadata>) -> Result<(), BoxError> {
        black_box(message.data().len());
        Ok(())
    }
}

/// Reads `path` block by block, handing each record to `each`.
async fn read_records(path: &Path, mut each: impl AsyncFnMut(Bytes)) -> u64 {
    let mut file = tokio::fs::File::open(path).await.unwrap();
    let mut buffer = BytesMut::with_capacity(BLOCK);
    let mut count = 0;
    loop {
        buffer.reserve(BLOCK);
        let read = file.read_buf(&mut buffer).await.unwrap();
        while let Some(end) = memchr::memchr(b'\n', &buffer) {
            let mut record = buffer.split_to(end + 1).freeze();
            record.truncate(end);
            each(record).await;
            count += 1;
        }
        if read == 0 {
            return count;
        }
    }
}

async fn raw(path: &Path) -> u64 {
    read_records(path, async |record: Bytes| {
        black_box(record.len());
    })
    .await
}

async fn chunked(path: &Path) -> u64 {
    let (txs, workers): (Vec<_>, Vec<_>) = (0..WORKERS)
        .map(|_| {
            let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(4);
            let worker = tokio::spawn(async move {
                let mut done = 0u64;
                while let Some(chunk) = rx.recv().await {
                    for record in &chunk {
                        black_box(record.len());
                    }
                    done += chunk.len() as u64;
                }
                done
            });
            (tx, worker)
        })
        .unzip();
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut next = 0;
    read_records(path, async |record: Bytes| {
        chunk.push(record);
        if chunk.len() == CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            txs[next % WORKERS].send(full).await.unwrap();
            next += 1;
        }
    })
    .await;
    txs[0].send(chunk).await.unwrap();
    drop(txs);
    let mut done = 0;
    for worker in workers {
        done += worker.await.unwrap();
    }
    done
}

async fn longshore(path: &Path) -> u64 {
    let config = FileConfig::new(path);
    let _ = std::fs::remove_file(config.checkpoint_path());
    let source = FileSource::open(config).await.unwrap();
    let pipeline = Pipeline::builder(source, Look)
        .processors(Processors::new(WORKERS))
        .start()
        .unwrap();
    pipeline.wait().await.unwrap().successful
}

fn make_file(path: &Path, records: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for n in 0..records {
        // 100 bytes with the newline.
        writeln!(file, "{n:>12},{}", "x".repeat(86)).unwrap();
    }
    file.flush().unwrap();
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let (case, path, records) = (
            &args[i + 1],
            PathBuf::from(&args[i + 2]),
            args[i + 3].parse::<u64>().unwrap(),
        );
        let runtime = support::runtime();
        let started = Instant::now();
        let done = runtime.block_on(async {
            match case.as_str() {
                "raw" => raw(&path).await,
                "chunked" => chunked(&path).await,
                _ => longshore(&path).await,
            }
        });
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(done, records, "{case}: every record");
        support::report(&[
            records as f64 / elapsed,
            support::cpu_seconds(),
            support::peak_rss_mb(),
        ]);
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let records: u64 = std::env::var("LONGSHORE_BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(if full { 2_000_000 } else { 20_000 });
    let rounds = if full { 5 } else { 1 };
    let dir = std::env::temp_dir().join(format!("longshore-file-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("records.txt");
    make_file(&path, records);
    let cases = ["raw", "chunked", "longshore"];
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut cpu: [Vec<f64>; 3] = Default::default();
    let mut rss: [f64; 3] = [0.0; 3];
    let (mut vs_raw, mut vs_chunked) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut this = [0.0; 3];
        for turn in 0..3 {
            let at = (turn + round) % 3;
            let v = support::run_child(
                &["--case", cases[at], path.to_str().unwrap(), &records.to_string()],
                &[],
            );
            this[at] = v[0];
            rates[at].push(v[0]);
            cpu[at].push(v[1] / records as f64 * 1e9);
            rss[at] = rss[at].max(v[2]);
        }
        vs_raw.push(this[2] / this[0]);
        vs_chunked.push(this[2] / this[1]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "BENCH case=file vs_raw={:.2} vs_chunked={:.2} msgs_per_s={:.0} raw_msgs_per_s={:.0} chunked_msgs_per_s={:.0} \
         cpu_ns_per_record={:.0} raw_cpu_ns_per_record={:.0} chunked_cpu_ns_per_record={:.0} \
         peak_rss_mb={:.1} raw_peak_rss_mb={:.1} chunked_peak_rss_mb={:.1} records={records} rounds={rounds}",
        median(vs_raw),
        median(vs_chunked),
        median(rates[2].clone()),
        median(rates[0].clone()),
        median(rates[1].clone()),
        median(cpu[2].clone()),
        median(cpu[0].clone()),
        median(cpu[1].clone()),
        rss[2],
        rss[0],
        rss[1],
    );
}
