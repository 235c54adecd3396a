//! The example end to end: a real PostgreSQL (initdb in a temporary folder, on a
//! loopback port), librdkafka's mock cluster over TCP, and the service binary itself.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

#[path = "../../../test-support/postgres.rs"]
mod postgres;

use postgres::Postgres;

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn produce(bootstrap: &str, records: &[(&str, String)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for (i, (key, payload)) in records.iter().enumerate() {
        let record = BaseRecord::to("payments")
            .key(*key)
            .payload(payload)
            .partition((i % 2) as i32);
        producer.send(record).map_err(|(error, _)| error).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

async fn count(db: &tokio_postgres::Client, table: &str) -> i64 {
    match db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await {
        Ok(row) => row.get(0),
        Err(_) => 0, // not created yet
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_in_their_tables_once_and_bad_records_in_the_dead_letter_topic() {
    let postgres = Postgres::start();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("payments", 2, 1).unwrap();
    cluster.create_topic("payments.dlq", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();

    let mut records: Vec<(&str, String)> = (0..1_000)
        .map(|id| {
            let table = if id % 2 == 0 { "orders" } else { "refunds" };
            (table, format!(r#"{{"id": {id}, "amount_cents": {}}}"#, id * 10))
        })
        .collect();
    records.push(("orders", r#"{"id": 4, "amount_cents": 40}"#.to_owned())); // delivered twice
    records.push(("audit", r#"{"id": 1, "amount_cents": 1}"#.to_owned())); // no such table
    records.push(("orders", "not json".to_owned()));
    produce(&bootstrap, &records);

    let dir = std::env::temp_dir().join(format!("longshore-k2p-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
name = "kafka-to-postgres"
batchers = [{{ name = "rows", batch_size = 100, batch_timeout = "100ms", concurrency = 2 }}]
retry = {{ max_attempts = 2, initial_backoff = "10ms" }}

[source]
bootstrap_servers = "{bootstrap}"
group_id = "kafka-to-postgres"
topics = ["payments"]
commit_interval = "200ms"
properties = {{ "session.timeout.ms" = "3000", "heartbeat.interval.ms" = "500" }}

[app]
postgres = "{}"
dead_letter_topic = "payments.dlq"
"#,
            postgres.url()
        ),
    )
    .unwrap();
    let service = Service(
        Command::new(env!("CARGO_BIN_EXE_kafka-to-postgres"))
            .arg("--config")
            .arg(&config)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("the service starts"),
    );

    let (db, connection) = tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&db, "orders").await + count(&db, "refunds").await < 1_000 {
        assert!(Instant::now() < deadline, "rows not stored within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&db, "orders").await, 500);
    assert_eq!(count(&db, "refunds").await, 500);
    let sum: i64 = db
        .query_one("SELECT sum(amount_cents)::bigint FROM refunds", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        sum,
        (0..1_000i64)
            .filter(|id| id % 2 == 1)
            .map(|id| id * 10)
            .sum::<i64>()
    );

    // The two bad records reach the dead-letter topic.
    let dlq: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, high) = dlq
            .fetch_watermarks("payments.dlq", 0, Duration::from_secs(5))
            .unwrap();
        if high == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "dead letters: {high}, not 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM: it drains, commits and says what it did.
    let mut service = service;
    let pid = service.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let output = std::mem::replace(&mut service.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("stopped: 1003 received, 1001 stored, 2 dead-lettered or failed"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
