//! The example end to end: LocalStack (an SQS-compatible server) and a PostgreSQL server of
//! its own, both on loopback, and the service binary itself, stopped with SIGTERM.

#[path = "../../../connectors/sqs/tests/common/mod.rs"]
mod common;
#[path = "../../../test-support/postgres.rs"]
mod postgres;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_depth, client, create_queue, drain, localstack, send, unique, Watchdog, TEST_LIMIT};
use postgres::Postgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_stored_once_and_bad_ones_reach_the_dead_letter_queue_as_sent() {
    let _watchdog = Watchdog::arm(TEST_LIMIT);
    let postgres = Postgres::start();
    let client = client().await;
    let name = unique("orders");
    let queue = create_queue(&client, &name, &[]).await;
    let dlq = create_queue(&client, &format!("{name}-dlq"), &[]).await;
    let regions = ["eu", "us", "ap"];
    let mut bodies: Vec<String> = (0..300)
        .map(|i| {
            format!(
                r#"{{"id": "o-{i}", "region": "{}", "cents": {}}}"#,
                regions[i % 3],
                100 + i
            )
        })
        .collect();
    bodies.push(r#"{"id": "o-7", "region": "us", "cents": 107}"#.to_owned()); // sent twice
    bodies.push(r#"{"id": "o-nothing", "region": "eu", "cents": 0}"#.to_owned());
    bodies.push("{not json".to_owned());
    send(&client, &queue, bodies.iter().cloned(), None).await;

    let dir = std::env::temp_dir().join(format!("longshore-sqs-orders-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let settings = dir.join("sqs-orders.toml");
    std::fs::write(
        &settings,
        format!(
            r#"
[pipeline]
name = "sqs-orders-test"
processors = {{ concurrency = 4 }}
batchers = [{{ name = "db", batch_size = 50, batch_timeout = "100ms" }}]
shutdown_deadline = "10s"

[source]
queue = "{queue}"
endpoint_url = "{endpoint}"
wait_time = "1s"

[app]
postgres = "{postgres}"
dead_letter_queue = "{dlq}"

[metrics]
addr = "127.0.0.1:0"
"#,
            endpoint = localstack().endpoint,
            postgres = postgres.url(),
        ),
    )
    .unwrap();
    // Its log to a file: a pipe nobody reads while it runs could fill and block it.
    let log_path = dir.join("sqs-orders.log");
    let mut service = Command::new(env!("CARGO_BIN_EXE_sqs-orders"))
        .arg("--config")
        .arg(&settings)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("the service starts");

    // The two bad orders in the dead-letter queue, reached with the source's own endpoint.
    let dead = drain(&client, &dlq, 2, Duration::from_secs(60)).await;
    let mut dead: Vec<&str> = dead.iter().filter_map(|m| m.body()).collect();
    dead.sort_unstable();
    assert_eq!(
        dead,
        [r#"{"id": "o-nothing", "region": "eu", "cents": 0}"#, "{not json"]
    );
    // Counted once the queue has nothing left, visible or in flight.
    assert_depth(&client, &queue, (0, 0)).await;
    Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    let stopped_at = Instant::now();
    let exit = service.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(exit.success(), "graceful stop: {exit:?}\n{log}");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(10),
        "stopped within its deadline"
    );
    // Every delivery accounted for: 301 stored (o-7 twice: once a row), 2 dead-lettered,
    // and nothing else (a redelivery after a visibility timeout would count again).
    let summary = log
        .lines()
        .find(|line| line.starts_with("stopped: "))
        .expect(&log)
        .to_owned();
    let numbers: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(numbers, [303, 301, 2], "{summary}");

    let (db, connection) = tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Each order once, with what it was sent with: per region, the count and the sum of
    // cents (100 + i for order i).
    let query = "SELECT region, count(*), sum(cents)::BIGINT FROM orders GROUP BY region ORDER BY region";
    let rows = db.query(query, &[]).await.unwrap();
    let stored: Vec<(String, i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let expected: Vec<(String, i64, i64)> = [(2, "ap"), (0, "eu"), (1, "us")]
        .into_iter()
        .map(|(first, region)| {
            let cents = (first..300).step_by(3).map(|i| 100 + i as i64).sum();
            (region.to_owned(), 100, cents)
        })
        .collect();
    assert_eq!(stored, expected);
    let _ = std::fs::remove_dir_all(&dir);
}
