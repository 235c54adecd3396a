//! Consumes an SQS queue and calls a slow HTTP endpoint once per message, under a rate
//! limit: a fast producer feeding a slow consumer.
//!
//! Each message's body is POSTed to `[app] endpoint`. A 2xx answer deletes the message.
//! A 429 or 503 is retried after the endpoint's `Retry-After` (else the retry policy's
//! backoff), through the message's visibility timeout, so the wait holds nothing in
//! memory. Another 4xx is permanent: no retry; the message goes to `[app]
//! dead_letter_queue` at once, and is deleted. Any other failure is retried with
//! backoff; after the last attempt it goes to the dead-letter queue too. Without
//! `dead_letter_queue`, final failures are left to the queue's redrive policy, which
//! counts receives: a permanent failure is then received again up to `maxReceiveCount`.
//! The pipeline's `rate_limit` keeps the endpoint under its quota whatever the backlog:
//! nothing is received faster than it can be sent on.
//!
//! ```sh
//! sqs-worker --config sqs-worker.toml
//! ```
//!
//! ```toml
//! [pipeline]
//! name = "sqs-worker"
//! processors = { concurrency = 32, max_demand = 2 }
//! rate_limit = { messages = 50, per = "1s" }
//! retry = { max_attempts = 5, initial_backoff = "2s" }
//!
//! [source]
//! queue = "https://sqs.eu-west-1.amazonaws.com/123456789012/enrich"
//! visibility_timeout = "60s"
//!
//! [app]
//! endpoint = "http://enricher.internal:8080/enrich"
//! timeout = "10s"
//! dead_letter_queue = "enrich-dlq"
//! ```

use std::time::Duration;

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use longshore::service::{ServiceArgs, ServiceConfig};
use longshore::{BoxError, Handler, Permanent, Pipeline, RetryAfter};
use longshore_sqs::{FinalFailure, SqsConfig, SqsDeadLetter, SqsMessage, SqsMetadata, SqsSource};

/// SQS to a slow HTTP endpoint, under a rate limit.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

/// The `[app]` section.
#[derive(Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct App {
    /// The endpoint each message is POSTed to (plain HTTP, inside the cluster).
    endpoint: String,
    /// How long one call may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    /// Where messages go after their last attempt (a queue's URL or name); unset, the
    /// source queue's redrive policy decides.
    dead_letter_queue: Option<String>,
}

impl Default for App {
    fn default() -> Self {
        App {
            endpoint: String::new(),
            timeout: Duration::from_secs(10),
            dead_letter_queue: None,
        }
    }
}

struct CallEndpoint {
    http: Client<HttpConnector, Full<Bytes>>,
    endpoint: hyper::Uri,
    timeout: Duration,
}

impl Handler for CallEndpoint {
    type Item = Bytes;
    type Metadata = SqsMetadata;

    async fn handle_message(&self, message: &mut SqsMessage) -> Result<(), BoxError> {
        // The body is forwarded as it came: no decode step, and no copy.
        let request = hyper::Request::post(&self.endpoint)
            .header("content-type", "application/json")
            .header("x-message-id", message.metadata().message_id())
            .body(Full::new(message.data().clone()))?;
        let answer = tokio::time::timeout(self.timeout, self.http.request(request))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))??;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = answer
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.parse().ok())
            .map(Duration::from_secs);
        let body = answer
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let error = format!("{status}: {}", String::from_utf8_lossy(&body));
        match (status.as_u16(), retry_after) {
            (429 | 503, Some(delay)) => Err(RetryAfter::new(error, delay).into()),
            (429 | 503, None) => Err(error.into()),
            (400..=499, _) => Err(Permanent::new(error).into()),
            _ => Err(error.into()),
        }
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
    let endpoint: hyper::Uri = config
        .app
        .endpoint
        .parse()
        .map_err(|error| format!("invalid app.endpoint {:?}: {error}", config.app.endpoint))?;

    let metrics = config.serve_metrics().await?;
    let http = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let handler = CallEndpoint {
        http,
        endpoint,
        timeout: config.app.timeout,
    };
    let builder = match &config.app.dead_letter_queue {
        Some(queue) => {
            let dead_letter = SqsDeadLetter::connect_beside(&config.source, queue).await?;
            // What the dead-letter queue took is deleted from the source queue.
            let source = SqsSource::connect(config.source.on_final_failure(FinalFailure::Delete)).await?;
            Pipeline::builder(source, handler).dead_letter(dead_letter)
        }
        None => Pipeline::builder(SqsSource::connect(config.source).await?, handler),
    };
    let pipeline = builder.config(config.pipeline).start()?;
    metrics.add_pipeline(pipeline.control());
    let summary = pipeline.run_until_signal().await?;
    metrics.shutdown().await;
    eprintln!(
        "stopped: {} received, {} delivered, {} failed",
        summary.received, summary.successful, summary.failed
    );
    Ok(())
}
