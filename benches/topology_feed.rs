//! What the topology page costs the pipeline it shows: the core batcher case (one
//! producer, 2 processors, batches of 100 over 2 batch processors) with the metrics
//! server on and no client, against the same with clients reading `/topology.json` as
//! the page does, each in a process of its own, in alternated rounds.
//!
//! Cases: `none` (the server, no client), `page` (one client, once a second: one open
//! page) and `tabs` (ten clients, once a second each: ten open pages, one body made for
//! them every half second). Prints `BENCH case=topology-feed ratio_page=<x>
//! ratio_tabs=<x> ...`, each ratio the median over the rounds of with-clients over
//! without; under `cargo test` a short smoke run.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use longshore::metrics::MetricsServer;
use longshore::source::memory::MemorySource;
use longshore::{Batcher, Pipeline, Processors};

/// One page's reading: `GET /topology.json`, to the end of the response, within 5 s.
fn read_feed(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /topology.json HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_end(&mut response).is_ok()
        && response.starts_with(b"HTTP/1.1 200")
        && response.windows(11).any(|w| w == b"\"pipelines\"")
}

/// Runs the pipeline over `messages` with `clients` pages open; messages per second and
/// the feed requests answered.
fn run_case(messages: u64, clients: usize) -> (f64, u64) {
    let runtime = support::runtime();
    let answered = Arc::new(AtomicU64::new(0));
    let elapsed = runtime.block_on(async {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let source = MemorySource::from_iter(0..messages);
        // From the start to the last acknowledgement: not the pages' last sleep.
        let started = Instant::now();
        let pipeline = Pipeline::builder(source, support::Sink)
            .name("bench")
            .processors(Processors::new(2))
            .batcher(Batcher::new("bench").batch_size(100).concurrency(2))
            .start()
            .unwrap();
        server.add_pipeline(pipeline.control());
        let done = Arc::new(AtomicBool::new(false));
        let pages: Vec<_> = (0..clients)
            .map(|i| {
                let (addr, done, answered) = (server.local_addr(), done.clone(), answered.clone());
                std::thread::spawn(move || {
                    // Spread over the second, as pages opened at different times are.
                    std::thread::sleep(Duration::from_millis(1000 / clients as u64 * i as u64));
                    let mut failed = 0u64;
                    while !done.load(Ordering::Relaxed) {
                        if read_feed(addr) {
                            answered.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed += 1;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    failed
                })
            })
            .collect();
        let summary = pipeline.wait().await.expect("the pipeline ends cleanly");
        let elapsed = started.elapsed();
        assert_eq!(summary.successful, messages, "every message acknowledged");
        done.store(true, Ordering::Relaxed);
        let failed: u64 = pages
            .into_iter()
            .map(|page| page.join().expect("a page's thread"))
            .sum();
        assert_eq!(failed, 0, "feed requests failed");
        server.shutdown().await;
        elapsed
    });
    let rate = messages as f64 / elapsed.as_secs_f64();
    (rate, answered.load(Ordering::Relaxed))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let clients: usize = args[i + 1].parse().unwrap();
        let messages: u64 = args[i + 2].parse().unwrap();
        let (rate, answered) = run_case(messages, clients);
        support::report(&[rate, answered as f64]);
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    // About 6 s a run at full speed: several readings of the page each.
    let messages: u64 = std::env::var("LONGSHORE_BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(if full { 20_000_000 } else { 20_000 });
    let rounds = if full { 5 } else { 1 };
    let (mut page, mut tabs) = (Vec::new(), Vec::new());
    let mut rates = [Vec::new(), Vec::new(), Vec::new()];
    let mut answered = [0.0; 3];
    for round in 0..rounds {
        // Alternated, and the order turned each round, so that drift falls on each alike.
        let mut order = [0usize, 1, 10];
        order.rotate_left(round % 3);
        let mut this = [0.0; 3];
        for clients in order {
            let at = [0, 1, 10].iter().position(|&c| c == clients).unwrap();
            let v = support::run_child(&["--case", &clients.to_string(), &messages.to_string()], &[]);
            this[at] = v[0];
            rates[at].push(v[0]);
            answered[at] += v[1];
        }
        page.push(this[1] / this[0]);
        tabs.push(this[2] / this[0]);
    }
    let range = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        format!("{lo:.3}-{hi:.3}")
    };
    println!(
        "BENCH case=topology-feed ratio_page={:.3} ratio_page_range={} ratio_tabs={:.3} ratio_tabs_range={} \
         msgs_per_s={:.0} page_msgs_per_s={:.0} tabs_msgs_per_s={:.0} page_requests={} tabs_requests={} \
         rounds={rounds} messages={messages}",
        median(page.clone()),
        range(&page),
        median(tabs.clone()),
        range(&tabs),
        median(rates[0].clone()),
        median(rates[1].clone()),
        median(rates[2].clone()),
        answered[1],
        answered[2],
    );
}
