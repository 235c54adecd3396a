//! The commands on the stream, and the entries this consumer holds (delivered to it and
//! not yet acknowledged), whose idle time it resets so that no other consumer claims them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamReadReply};
use redis::Value;

use crate::metadata::RedisMetadata;
use crate::metrics::StreamMetrics;

/// One stream, one group, one consumer, as this source works them.
pub(crate) struct Stream {
    /// For acknowledgements, claims and the lag: never blocked.
    pub(crate) commands: ConnectionManager,
    pub(crate) key: Arc<str>,
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) field: String,
    pub(crate) claim_idle: Duration,
    /// Entries delivered here and not yet acknowledged.
    pub(crate) held: Mutex<HashSet<String>>,
    pub(crate) metrics: StreamMetrics,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("key", &self.key)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// What a read takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum From {
    /// This consumer's own entries delivered before and not acknowledged (after a
    /// restart under the same name), oldest first, after a given id.
    Own,
    /// Entries never delivered to the group (`>`), waiting up to `block` for them.
    New,
}

impl Stream {
    /// Creates the group (and the stream) if missing, reading from the stream's start.
    pub(crate) async fn create_group(&self) -> redis::RedisResult<()> {
        let mut connection = self.commands.clone();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&*self.key)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Reads at most `count` entries on `connection` (a connection of the reads' own: a
    /// blocking read holds it).
    pub(crate) async fn read(
        &self,
        connection: &mut ConnectionManager,
        from: From,
        after: &str,
        count: usize,
        block: Duration,
    ) -> redis::RedisResult<Vec<RedisMetadata>> {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if from == From::New {
            command.arg("BLOCK").arg(block.as_millis() as u64);
        }
        command.arg("STREAMS").arg(&*self.key).arg(after);
        let reply: Option<StreamReadReply> = command.query_async(connection).await?;
        let entries = reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .map(|entry| self.metadata(entry))
            .collect::<Vec<_>>();
        self.hold(&entries);
        Ok(entries)
    }

    /// Claims at most `count` entries other consumers were delivered and have not
    /// acknowledged for `claim_idle`: a dead consumer's.
    pub(crate) async fn claim(&self, count: usize) -> redis::RedisResult<Vec<RedisMetadata>> {
        let mut connection = self.commands.clone();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&*self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(self.claim_idle.as_millis() as u64)
            .arg("0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut connection)
            .await?;
        let entries: Vec<RedisMetadata> = reply
            .claimed
            .into_iter()
            .map(|entry| self.metadata(entry))
            .collect();
        self.hold(&entries);
        Ok(entries)
    }

    fn metadata(&self, entry: StreamId) -> RedisMetadata {
        let fields = entry.map.into_iter().filter_map(|(name, value)| match value {
            Value::BulkString(bytes) => Some((name, Bytes::from(bytes))),
            Value::SimpleString(text) => Some((name, Bytes::from(text))),
            _ => None,
        });
        RedisMetadata::new(self.key.clone(), entry.id, fields)
    }

    fn hold(&self, entries: &[RedisMetadata]) {
        lock(&self.held).extend(entries.iter().map(|entry| entry.id().to_owned()));
    }

    /// Acknowledges `ids`, trying again while the server is away for as long as
    /// `claim_idle`; then lets them go either way. An acknowledgement never sent loses
    /// nothing: the entries are claimed again and handled twice.
    pub(crate) async fn acknowledge(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let backoff = longshore::RetryPolicy::new(u32::MAX)
            .initial_backoff(Duration::from_millis(50))
            .max_backoff(Duration::from_secs(2));
        let give_up = tokio::time::Instant::now() + self.claim_idle;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut connection = self.commands.clone();
            let acked: redis::RedisResult<u64> = redis::cmd("XACK")
                .arg(&*self.key)
                .arg(&self.group)
                .arg(ids)
                .query_async(&mut connection)
                .await;
            match acked {
                Ok(_) => break,
                Err(error) if tokio::time::Instant::now() < give_up => {
                    tracing::debug!(%error, entries = ids.len(), "redis XACK failed; trying again");
                    tokio::time::sleep(backoff.backoff(attempt)).await;
                }
                Err(error) => {
                    tracing::warn!(%error, entries = ids.len(), "redis XACK failed for claim_idle; the entries will be claimed and handled again");
                    break;
                }
            }
        }
        let mut held = lock(&self.held);
        for id in ids {
            held.remove(id);
        }
    }

    /// Resets the idle time of the entries held here (`XCLAIM ... JUSTID` to itself), so
    /// that no other consumer claims an entry still being handled.
    pub(crate) async fn keep_held(&self) -> redis::RedisResult<()> {
        let ids: Vec<String> = lock(&self.held).iter().cloned().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut connection = self.commands.clone();
        redis::cmd("XCLAIM")
            .arg(&*self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&ids)
            .arg("JUSTID")
            .query_async::<Value>(&mut connection)
            .await?;
        Ok(())
    }

    /// Reads the stream's length and the group's pending count and lag into the gauges.
    pub(crate) async fn measure(&self) -> redis::RedisResult<()> {
        let mut connection = self.commands.clone();
        let length: i64 = redis::cmd("XLEN")
            .arg(&*self.key)
            .query_async(&mut connection)
            .await?;
        let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&*self.key)
            .query_async(&mut connection)
            .await?;
        self.metrics.length.set(length);
        if let Some(group) = groups.groups.iter().find(|g| g.name == self.group) {
            self.metrics.pending.set(group.pending as i64);
            self.metrics.lag.set(group.lag.unwrap_or(0) as i64);
        }
        Ok(())
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
