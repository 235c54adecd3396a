//! Test support, not an example: librdkafka's mock cluster hosted in a process of its
//! own, so that it outlives the consumer processes a kill -9 test kills (a tansu broker
//! with in-memory storage stops serving fetches from early offsets past about a million
//! records). Prints `bootstrap=<servers>`, then serves until its stdin closes.
//!
//! Usage: mock-broker TOPIC PARTITIONS

use std::io::{Read, Write};

use rdkafka::mocking::MockCluster;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [topic, partitions] = args.as_slice() else {
        return Err("usage: mock-broker TOPIC PARTITIONS".into());
    };
    let cluster = MockCluster::new(1)?;
    cluster.create_topic(topic, partitions.parse()?, 1)?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "bootstrap={}", cluster.bootstrap_servers())?;
    stdout.flush()?;
    // Until the test process goes (its end of the pipe closes).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
