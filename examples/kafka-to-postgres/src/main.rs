//! Consumes a Kafka topic and inserts its records into PostgreSQL, many rows per
//! statement: the "insert n rows at once" case of a batcher keyed by table.
//!
//! Each record's key names its table (`orders` or `refunds`), its payload is a JSON row
//! (`{"id": 7, "amount_cents": 1250}`). Processors check each record; a batcher groups
//! them by table, 500 at a time or every 200 ms; each batch is one `INSERT ... ON CONFLICT
//! DO NOTHING`, so a record delivered twice (after a crash, before its commit) is stored
//! once. Records that cannot be stored go to the dead-letter topic.
//!
//! ```sh
//! kafka-to-postgres --config kafka-to-postgres.toml
//! ```
//!
//! ```toml
//! [pipeline]
//! name = "kafka-to-postgres"
//! batchers = [{ name = "rows", batch_size = 500, batch_timeout = "200ms", concurrency = 2 }]
//! retry = { max_attempts = 3 }
//!
//! [source]
//! bootstrap_servers = "kafka:9092"
//! group_id = "kafka-to-postgres"
//! topics = ["payments"]
//!
//! [app]
//! postgres = "host=db user=app dbname=payments"
//! dead_letter_topic = "payments.dlq"
//! ```

use std::future::Future;
use std::sync::Arc;

use clap::Parser;
use longshore::decode::Json;
use longshore::service::{ServiceArgs, ServiceConfig};
use longshore::{BatchInfo, BatchKey, BoxError, Handler, Permanent, Pipeline};
use longshore_kafka::{KafkaConfig, KafkaDeadLetter, KafkaMessage, KafkaMetadata, KafkaSource};
use tokio_postgres::types::ToSql;

/// Kafka to PostgreSQL, in batches per table.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

/// The `[app]` section.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct App {
    /// A libpq connection string.
    postgres: String,
    /// Where records that cannot be stored go.
    dead_letter_topic: String,
}

/// The tables a record may name, and so the batch keys: a fixed list, never data.
const TABLES: [&str; 2] = ["orders", "refunds"];

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct Row {
    id: i64,
    amount_cents: i64,
}

/// Where a batch of rows goes: PostgreSQL in the service, a vector in its unit tests.
trait Store: Send + Sync + 'static {
    /// Inserts `rows` into `table`, all or none; a row already there is left as it is.
    fn insert(&self, table: &'static str, rows: &[&Row])
        -> impl Future<Output = Result<(), BoxError>> + Send;
}

impl Store for tokio_postgres::Client {
    async fn insert(&self, table: &'static str, rows: &[&Row]) -> Result<(), BoxError> {
        // One statement for the whole batch: ($1, $2), ($3, $4), ...
        let values: Vec<String> = (0..rows.len())
            .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        let statement = format!(
            "INSERT INTO {table} (id, amount_cents) VALUES {} ON CONFLICT (id) DO NOTHING",
            values.join(", ")
        );
        let params: Vec<&(dyn ToSql + Sync)> = rows
            .iter()
            .flat_map(|row| [&row.id as &(dyn ToSql + Sync), &row.amount_cents])
            .collect();
        self.execute(&statement, &params).await?;
        Ok(())
    }
}

struct ToPostgres<S> {
    db: S,
}

/// Each payload is parsed once, by the pipeline's decode step (`Json<Row>`): a record that
/// is not a row (or a tombstone) fails there, for good, and goes to the dead-letter topic
/// as it was read.
impl<S: Store> Handler for ToPostgres<S> {
    type Item = Row;
    type Metadata = KafkaMetadata;

    async fn handle_message(&self, message: &mut KafkaMessage<Row>) -> Result<(), BoxError> {
        let key = message.metadata().key().unwrap_or_default();
        let table = TABLES
            .into_iter()
            .find(|table| table.as_bytes() == key)
            .ok_or_else(|| Permanent::new(format!("no table {:?}", String::from_utf8_lossy(key))))?;
        message.put_batch_key(table);
        Ok(())
    }

    async fn handle_batch(&self, batch: &mut [KafkaMessage<Row>], info: &BatchInfo) -> Result<(), BoxError> {
        let table = TABLES
            .into_iter()
            .find(|&table| info.batch_key == BatchKey::from(table))
            .ok_or("batch of an unknown table")?;
        let rows: Vec<&Row> = batch.iter().map(KafkaMessage::data).collect();
        self.db.insert(table, &rows).await
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    longshore::service::exit(run().await)
}

async fn run() -> Result<(), BoxError> {
    let args = Args::parse();
    let config: ServiceConfig<KafkaConfig, App> = args.service.load()?;
    args.service.init_logging(&config);

    let (db, connection) = tokio_postgres::connect(&config.app.postgres, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("postgres connection lost: {error}");
        }
    });
    for table in TABLES {
        db.execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS {table} (id BIGINT PRIMARY KEY, amount_cents BIGINT NOT NULL)"
            ),
            &[],
        )
        .await?;
    }

    let metrics = config.serve_metrics().await?;
    let dead_letter = KafkaDeadLetter::for_source(&config.source, &config.app.dead_letter_topic)?;
    let source = KafkaSource::new(config.source)?;
    let pipeline = Pipeline::builder(source, Arc::new(ToPostgres { db }))
        .decode(Json::<Row>::new())
        .config(config.pipeline)
        .dead_letter(dead_letter)
        .start()?;
    metrics.add_pipeline(pipeline.control());
    let summary = pipeline.run_until_signal().await?;
    metrics.shutdown().await;
    eprintln!(
        "stopped: {} received, {} stored, {} dead-lettered or failed",
        summary.received, summary.successful, summary.failed
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The real handler and decode step, through the real topology, on test messages:
    //! rows reach their table's batch, bad records fail without reaching the store.

    use std::sync::Mutex;

    use longshore::testing::TestSource;
    use longshore::Batcher;

    use super::*;

    /// Rows by table, as inserted.
    #[derive(Default)]
    struct Rows(Mutex<Vec<(&'static str, Row)>>);

    impl Store for Arc<Rows> {
        async fn insert(&self, table: &'static str, rows: &[&Row]) -> Result<(), BoxError> {
            let mut stored = self.0.lock().unwrap();
            stored.extend(rows.iter().map(|&row| (table, row.clone())));
            Ok(())
        }
    }

    fn record(offset: i64, key: &str, payload: &str) -> KafkaMessage {
        KafkaMetadata::new("payments", 0, offset)
            .with_key(key)
            .with_payload(payload)
            .into_message()
    }

    #[tokio::test]
    async fn rows_go_to_their_table_and_bad_records_fail_for_good() {
        let rows = Arc::new(Rows::default());
        let (source, sender) = TestSource::new();
        let pipeline = Pipeline::builder(source, ToPostgres { db: rows.clone() })
            .decode(Json::<Row>::new())
            .batcher(Batcher::new("rows"))
            .start()
            .unwrap();
        let outcomes = sender
            .test_messages(vec![
                record(0, "orders", r#"{"id": 1, "amount_cents": 250}"#),
                record(1, "refunds", r#"{"id": 2, "amount_cents": -250}"#),
                record(2, "orders", "not a row"),
                record(3, "invoices", r#"{"id": 3, "amount_cents": 1}"#),
            ])
            .await;
        drop(sender);
        pipeline.wait().await.unwrap();

        let successful: Vec<bool> = outcomes.iter().map(|o| o.successful).collect();
        assert_eq!(successful, [true, true, false, false]);
        assert!(outcomes[2]
            .message
            .status()
            .to_string()
            .starts_with("failed (decode)"));
        assert_eq!(
            outcomes[3].message.status().to_string(),
            r#"failed (error): no table "invoices""#
        );
        let mut stored = rows.0.lock().unwrap().clone();
        stored.sort_by_key(|(_, row)| row.id);
        assert_eq!(
            stored,
            [
                (
                    "orders",
                    Row {
                        id: 1,
                        amount_cents: 250
                    }
                ),
                (
                    "refunds",
                    Row {
                        id: 2,
                        amount_cents: -250
                    }
                )
            ]
        );
    }
}
