//! The database, reached again after it went away: one client for the source and its
//! acknowledger (statements pipeline over it), and a listening connection of its own.

use std::sync::Arc;
use std::time::Duration;

use longshore::RetryPolicy;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};
use tokio_util::sync::CancellationToken;

/// A client that connects again when its connection is gone.
#[derive(Debug)]
pub(crate) struct Db {
    config: Config,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl Db {
    pub(crate) fn new(config: Config) -> Self {
        Db {
            config,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The client, connecting first if there is none or its connection closed.
    pub(crate) async fn client(&self) -> Result<Arc<Client>, tokio_postgres::Error> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|client| !client.is_closed()) {
            return Ok(client.clone());
        }
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "postgres connection lost; the next statement connects again");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }
}

/// Listens on `channel` until `stop`, waking `wake` for each notification naming
/// `queue`, and once on each (re)connect, since notifications sent while away are lost.
pub(crate) async fn listen(
    config: Config,
    channel: String,
    queue: Arc<str>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let backoff = RetryPolicy::new(u32::MAX)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_secs(5));
    let mut failures = 0;
    while !stop.is_cancelled() {
        let listened = tokio::select! {
            () = stop.cancelled() => return,
            listened = listen_once(&config, &channel, &queue, &wake) => listened,
        };
        if let Err(error) = listened {
            failures += 1;
            tracing::debug!(%error, "postgres listener disconnected; connecting again");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff.backoff(failures)) => {}
            }
        }
    }
}

async fn listen_once(
    config: &Config,
    channel: &str,
    queue: &str,
    wake: &Notify,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = Box::pin(futures_util::stream::poll_fn(move |cx| {
        connection.poll_message(cx)
    }));
    let statement = format!("LISTEN \"{channel}\"");
    let listen = client.batch_execute(&statement);
    // The connection is driven by the stream: poll both until LISTEN is answered.
    tokio::pin!(listen);
    loop {
        tokio::select! {
            done = &mut listen => { done?; break; }
            message = futures_util::StreamExt::next(&mut messages) => match message {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            }
        }
    }
    wake.notify_one();
    loop {
        match futures_util::StreamExt::next(&mut messages).await {
            Some(Ok(AsyncMessage::Notification(note))) if note.payload() == queue => wake.notify_one(),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error),
            None => return Ok(()),
        }
    }
}
