//! JSON orders from an SQS queue into PostgreSQL: each body parsed once (the pipeline's
//! decode step), orders batched by region, each batch one `INSERT ... ON CONFLICT DO
//! NOTHING` (an order delivered twice is stored once). An order that is not JSON, or of
//! nothing, goes to the dead-letter queue as it came, and is deleted from the source.
//!
//! ```sh
//! sqs-orders --config sqs-orders.toml
//! ```
//!
//! ```toml
//! [pipeline]
//! name = "sqs-orders"
//! processors = { concurrency = 8 }
//! batchers = [{ name = "db", batch_size = 100, batch_timeout = "200ms" }]
//! retry = { max_attempts = 5, initial_backoff = "10s" }
//!
//! [source]
//! queue = "orders"
//! region = "eu-west-1"
//!
//! [app]
//! postgres = "host=db user=app dbname=shop"
//! dead_letter_queue = "orders-dlq"
//! ```

use std::future::Future;
use std::sync::Arc;

use clap::Parser;
use longshore::decode::Json;
use longshore::service::{ServiceArgs, ServiceConfig};
use longshore::{BatchInfo, BoxError, Handler, Permanent, Pipeline};
use longshore_sqs::{FinalFailure, SqsConfig, SqsDeadLetter, SqsMessage, SqsMetadata, SqsSource};
use tokio_postgres::types::ToSql;

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
    /// Where orders that cannot be stored go (a queue's URL or name).
    dead_letter_queue: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct Order {
    id: String,
    region: String,
    cents: i64,
}

/// Where a batch of orders goes: PostgreSQL in the service, a vector in its unit tests.
trait Store: Send + Sync + 'static {
    /// Inserts `orders`, all or none; an order already there is left as it is.
    fn insert(&self, orders: &[&Order]) -> impl Future<Output = Result<(), BoxError>> + Send;
}

impl Store for tokio_postgres::Client {
    async fn insert(&self, orders: &[&Order]) -> Result<(), BoxError> {
        // One statement for the whole batch: ($1, $2, $3), ($4, $5, $6), ...
        let values: Vec<String> = (0..orders.len())
            .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
            .collect();
        let statement = format!(
            "INSERT INTO orders (id, region, cents) VALUES {} ON CONFLICT (id) DO NOTHING",
            values.join(", ")
        );
        let params: Vec<&(dyn ToSql + Sync)> = orders
            .iter()
            .flat_map(|o| [&o.id as &(dyn ToSql + Sync), &o.region, &o.cents])
            .collect();
        self.execute(&statement, &params).await?;
        Ok(())
    }
}

struct Orders<S> {
    db: S,
}

impl<S: Store> Handler for Orders<S> {
    type Item = Order;
    type Metadata = SqsMetadata;

    async fn handle_message(&self, message: &mut SqsMessage<Order>) -> Result<(), BoxError> {
        if message.data().cents <= 0 {
            return Err(Permanent::new(format!("order {} is of nothing", message.data().id)).into());
        }
        message.put_batch_key(message.data().region.clone());
        Ok(())
    }

    async fn handle_batch(&self, batch: &mut [SqsMessage<Order>], _info: &BatchInfo) -> Result<(), BoxError> {
        let orders: Vec<&Order> = batch.iter().map(SqsMessage::data).collect();
        self.db.insert(&orders).await
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    longshore::service::exit(run().await)
}

async fn run() -> Result<(), BoxError> {
    let args = Args::parse();
    let config: ServiceConfig<SqsConfig, App> = args.service.load()?;
    args.service.init_logging(&config);

    let (db, connection) = tokio_postgres::connect(&config.app.postgres, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("postgres connection lost: {error}");
        }
    });
    db.execute(
        "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, region TEXT NOT NULL, cents BIGINT NOT NULL)",
        &[],
    )
    .await?;

    let metrics = config.serve_metrics().await?;
    // Reached as the source is: the [source] region and endpoint.
    let dead_letter = SqsDeadLetter::connect_beside(&config.source, &config.app.dead_letter_queue).await?;
    // What the dead-letter queue took is deleted from the source queue.
    let source = SqsSource::connect(config.source.on_final_failure(FinalFailure::Delete)).await?;
    let pipeline = Pipeline::builder(source, Arc::new(Orders { db }))
        .decode(Json::<Order>::new())
        .config(config.pipeline)
        .dead_letter(dead_letter)
        .start()?;
    metrics.add_pipeline(pipeline.control());
    let summary = pipeline.run_until_signal().await?;
    metrics.shutdown().await;
    eprintln!(
        "stopped: {} received, {} stored, {} dead-lettered",
        summary.received, summary.successful, summary.dead_lettered
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The real handler and decode step, through the real topology, on SQS messages built
    //! by hand: orders reach the store in batches of one region, bad ones fail for good.

    use std::sync::Mutex;

    use longshore::testing::TestSource;
    use longshore::Batcher;

    use super::*;

    /// Batches as inserted.
    #[derive(Default)]
    struct Batches(Mutex<Vec<Vec<Order>>>);

    impl Store for Arc<Batches> {
        async fn insert(&self, orders: &[&Order]) -> Result<(), BoxError> {
            let batch = orders.iter().map(|&order| order.clone()).collect();
            self.0.lock().unwrap().push(batch);
            Ok(())
        }
    }

    fn order(id: &str, body: &str) -> SqsMessage {
        SqsMetadata::new("orders", id, body).into_message()
    }

    #[tokio::test]
    async fn orders_are_stored_in_batches_of_one_region_and_bad_ones_fail() {
        let batches = Arc::new(Batches::default());
        let (source, sender) = TestSource::new();
        let pipeline = Pipeline::builder(source, Orders { db: batches.clone() })
            .decode(Json::<Order>::new())
            .batcher(Batcher::new("db").batch_size(10))
            .start()
            .unwrap();
        let outcomes = sender
            .test_messages(vec![
                order("m-1", r#"{"id": "o-1", "region": "eu", "cents": 250}"#),
                order("m-2", r#"{"id": "o-2", "region": "us", "cents": 100}"#),
                order("m-3", r#"{"id": "o-3", "region": "eu", "cents": 75}"#),
                order("m-4", r#"{"id": "o-4", "region": "eu", "cents": 0}"#),
                order("m-5", r#"{"id": "o-5", "region": "#),
            ])
            .await;
        drop(sender);
        pipeline.wait().await.unwrap();

        let successful: Vec<bool> = outcomes.iter().map(|o| o.successful).collect();
        assert_eq!(successful, [true, true, true, false, false]);
        assert_eq!(
            outcomes[3].message.status().to_string(),
            "failed (error): order o-4 is of nothing"
        );
        assert!(outcomes[4]
            .message
            .status()
            .to_string()
            .starts_with("failed (decode)"));
        let mut batches = batches.0.lock().unwrap().clone();
        batches.sort_by(|a, b| a[0].region.cmp(&b[0].region));
        let ids: Vec<Vec<&str>> = batches
            .iter()
            .map(|batch| batch.iter().map(|o| o.id.as_str()).collect())
            .collect();
        assert_eq!(ids, [vec!["o-1", "o-3"], vec!["o-2"]]);
    }
}
