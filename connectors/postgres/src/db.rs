//! The database, reached again after it went away: one client for the source and its
//! acknowledger (statements pipeline over it), and a listening connection of its own.

use std::sync::Arc;
use std::time::Duration;

use longshore::RetryPolicy;
use std::collections::HashMap;
use tokio::sync::Notify;

use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Statement};
use tokio_util::sync::CancellationToken;

/// A client that connects again when its connection is gone, with the statements it
/// prepared (each statement is parsed once per connection, not per call).
#[derive(Debug)]
pub(crate) struct Db {
    config: Config,
    connected: tokio::sync::Mutex<Option<Arc<Connected>>>,
}

/// One connection's client and its prepared statements.
#[derive(Debug)]
pub(crate) struct Connected {
    pub(crate) client: Client,
    prepared: std::sync::Mutex<HashMap<String, Statement>>,
}

impl Connected {
    /// `sql`, prepared on this connection once.
    pub(crate) async fn statement(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.prepared.lock().unwrap_or_else(|p| p.into_inner()).get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// `result`, and `sql` prepared again next time if the server refused its prepared
    /// form: the table was altered since ("cached plan must not change result type"),
    /// which a new preparation reads as it is now.
    fn forget_if_stale<T>(
        &self,
        sql: &str,
        result: Result<T, tokio_postgres::Error>,
    ) -> Result<T, tokio_postgres::Error> {
        if let Err(error) = &result {
            if error.code() == Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED) {
                self.forget(sql);
            }
        }
        result
    }

    /// `sql` prepared again next time.
    fn forget(&self, sql: &str) {
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sql);
    }
}

impl Db {
    /// Keeps the connection busy while the guard lives: a statement on it waits.
    #[cfg(test)]
    pub(crate) async fn hold(&self) -> tokio::sync::MutexGuard<'_, Option<Arc<Connected>>> {
        self.connected.lock().await
    }

    pub(crate) fn new(config: Config) -> Self {
        Db {
            config,
            connected: tokio::sync::Mutex::new(None),
        }
    }

    /// The connection, made first if there is none or it closed.
    pub(crate) async fn connected(&self) -> Result<Arc<Connected>, tokio_postgres::Error> {
        let mut slot = self.connected.lock().await;
        if let Some(connected) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(connected.clone());
        }
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "postgres connection lost; the next statement connects again");
            }
        });
        let connected = Arc::new(Connected {
            client,
            prepared: std::sync::Mutex::default(),
        });
        *slot = Some(connected.clone());
        Ok(connected)
    }

    /// Asks the server to cancel what runs on the connection now (a statement whose
    /// caller stopped waiting), so that it does not run on, holding the connection.
    /// Only for a connection that runs one kind of statement, one at a time: another
    /// statement running by then would be the one cancelled.
    pub(crate) async fn cancel(&self) {
        let connected = self.connected.lock().await.clone();
        if let Some(connected) = connected {
            if let Err(error) = connected.client.cancel_token().cancel_query(NoTls).await {
                tracing::debug!(%error, "postgres statement not cancelled");
            }
        }
    }

    /// Runs `sql` (prepared once per connection) with `params`: the rows.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let connected = self.connected().await?;
        let statement = connected.statement(sql).await?;
        let queried = connected.client.query(&statement, params).await;
        connected.forget_if_stale(sql, queried)
    }

    /// Runs `sql` with `params` once `check` found nothing wrong with the statement as
    /// prepared (its columns' types), both on one connection: the statement checked is
    /// the one run. What `check` found, else the rows; a statement refused is prepared
    /// again next time (the table may be altered back).
    pub(crate) async fn query_checked<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        check: impl FnOnce(&Statement) -> Option<T>,
    ) -> Result<Result<Vec<tokio_postgres::Row>, T>, tokio_postgres::Error> {
        let connected = self.connected().await?;
        let statement = connected.statement(sql).await?;
        if let Some(found) = check(&statement) {
            connected.forget(sql);
            return Ok(Err(found));
        }
        let queried = connected.client.query(&statement, params).await;
        connected.forget_if_stale(sql, queried).map(Ok)
    }

    /// Runs `sql` (prepared once per connection) with `params`: the rows changed.
    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let connected = self.connected().await?;
        let statement = connected.statement(sql).await?;
        let executed = connected.client.execute(&statement, params).await;
        connected.forget_if_stale(sql, executed)
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
        let connected_at = tokio::time::Instant::now();
        let listened = tokio::select! {
            () = stop.cancelled() => return,
            listened = listen_once(&config, &channel, &queue, &wake) => listened,
        };
        // A connection that lived a while starts the backoff again; one ended at once
        // (an error, or closed cleanly) waits longer each time.
        if connected_at.elapsed() > Duration::from_secs(30) {
            failures = 0;
        }
        failures += 1;
        if let Err(error) = listened {
            tracing::debug!(%error, "postgres listener disconnected; connecting again");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff.backoff(failures)) => {}
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
