//! What the PostgreSQL tests share: a server of their own with the queue table, and
//! rows enqueued and counted through a plain client.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

#[path = "../../../../test-support/postgres.rs"]
mod postgres;

pub use postgres::Postgres;

use longshore_postgres::tokio_postgres::{Client, NoTls};
use longshore_postgres::{PgQueueConfig, PgQueueSource};

/// A server of its own, with the queue table made.
pub async fn server() -> Postgres {
    let server = Postgres::start();
    PgQueueSource::migrate(&PgQueueConfig::new(server.url()))
        .await
        .unwrap();
    server
}

pub async fn client(url: &str) -> Client {
    let (client, connection) = longshore_postgres::tokio_postgres::connect(url, NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Inserts `payloads` into `queue`, in order, in one statement.
pub async fn enqueue(client: &Client, queue: &str, payloads: Vec<Vec<u8>>) {
    client
        .execute(
            "INSERT INTO longshore_queue (queue, payload) SELECT $1, p FROM unnest($2::bytea[]) WITH ORDINALITY AS t(p, n) ORDER BY n",
            &[&queue, &payloads],
        )
        .await
        .unwrap();
}

/// Rows of `queue` not done: (not failed, failed for good).
pub async fn rows(client: &Client, queue: &str) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE failed_at IS NULL), count(*) FILTER (WHERE failed_at IS NOT NULL) FROM longshore_queue WHERE queue = $1",
            &[&queue],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}
