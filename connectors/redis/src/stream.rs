//! The commands on the stream, and the entries this consumer holds (delivered to it and
//! not yet acknowledged), whose idle time it resets so that no other consumer claims them.

use foldhash::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, RwLock, Semaphore};
use tokio_util::sync::CancellationToken;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamPendingCountReply};
use redis::{ErrorKind, RedisError, Value};

use crate::metadata::{EntryId, RedisStreamMetadata};
use crate::metrics::StreamMetrics;

/// The most pending entries listed by one `XPENDING` when looking for unseen ones.
const PENDING_PAGE: usize = 1000;

/// One stream, one group, one consumer, as this source works them.
pub(crate) struct Stream {
    /// For claims, the lag, and acknowledgements that no read took: never blocked.
    pub(crate) commands: ConnectionManager,
    pub(crate) key: Arc<str>,
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) field: String,
    pub(crate) claim_idle: Duration,
    /// Entries delivered here and not yet acknowledged.
    pub(crate) held: Mutex<HashSet<EntryId>>,
    /// Taken across a renewal of the held entries and across a hand-back: a renewal
    /// that read its entries before a hand-back would otherwise reset their idle time
    /// after it, and they would wait `claim_idle` instead of being claimable at once.
    pub(crate) renewing: tokio::sync::Mutex<()>,
    /// Shared by each read and claim, from its command until what it delivered is held;
    /// taken alone by a take-back of entries delivered unseen: an answer slow to come
    /// back (a large one, a busy network) would otherwise have its entries, pending here
    /// and not yet held, taken back and handed out, finished, then handed out again
    /// with it.
    pub(crate) delivering: tokio::sync::RwLock<()>,
    /// Where the next claim scan starts.
    pub(crate) claim_cursor: Mutex<String>,
    /// Acknowledgements made and not yet sent.
    pub(crate) acks: AckQueue,
    /// The client ids and names of the read connections waiting for new entries.
    pub(crate) waiting: Mutex<Vec<(i64, String)>>,
    /// Told at shutdown: reads no longer wait for new entries.
    pub(crate) reads_stopped: CancellationToken,
    pub(crate) metrics: StreamMetrics,
}

/// A read connection's client id and name, listed in [`Stream::waiting`] while its read
/// waits.
struct Waiting<'a> {
    list: &'a Mutex<Vec<(i64, String)>>,
    id: i64,
}

impl<'a> Waiting<'a> {
    fn new(list: &'a Mutex<Vec<(i64, String)>>, id: i64, name: String) -> Self {
        lock(list).push((id, name));
        Waiting { list, id }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut list = lock(self.list);
        if let Some(at) = list.iter().position(|(id, _)| *id == self.id) {
            list.swap_remove(at);
        }
    }
}

/// How long an acknowledgement waits for a read to go with before it is sent on its own.
const ACK_LINGER: Duration = Duration::from_millis(2);

/// Acknowledgements made and not yet sent. Each goes to the server with the next read, in
/// the same round trip (as a hand-written consumer sends them, and on a server that syncs
/// every write to disk, under the same sync), or on its own after [`ACK_LINGER`] when no
/// read comes. The pipeline counts them done at once: its in-flight bound no longer
/// waits for an `XACK` round trip, which would leave one read in flight where two fit.
#[derive(Debug)]
pub(crate) struct AckQueue {
    queued: Mutex<Vec<EntryId>>,
    /// Told when `queued` stops being empty.
    queued_some: Notify,
    /// How many more may be queued: the pipeline's `max_in_flight` (0 until the pipeline
    /// says it). Past that, an acknowledgement is sent at once and waited for, so that
    /// those counted done and not yet confirmed, what a kill makes handled again beside
    /// the entries in flight, stay within that bound.
    room: Semaphore,
    room_given: std::sync::Once,
    /// Held shared by whoever sends acknowledgements taken from `queued`; whole by
    /// [`Stream::flush_acks`], which so waits for every one of them.
    sending: RwLock<()>,
}

impl Default for AckQueue {
    fn default() -> Self {
        AckQueue {
            queued: Mutex::default(),
            queued_some: Notify::new(),
            room: Semaphore::new(0),
            room_given: std::sync::Once::new(),
            sending: RwLock::default(),
        }
    }
}

impl AckQueue {
    /// Lets `n` acknowledgements be queued (the pipeline's `max_in_flight`), once.
    pub(crate) fn allow(&self, n: usize) {
        self.room_given.call_once(|| self.room.add_permits(n));
    }

    /// Queues `ids`: `false`, nothing queued, when there is no room for them.
    fn queue(&self, ids: &[EntryId]) -> bool {
        let Ok(room) = self.room.try_acquire_many(ids.len() as u32) else {
            return false;
        };
        room.forget();
        let mut queued = lock(&self.queued);
        if queued.is_empty() {
            self.queued_some.notify_one();
        }
        queued.extend_from_slice(ids);
        true
    }

    fn take(&self) -> Vec<EntryId> {
        std::mem::take(&mut *lock(&self.queued))
    }

    /// Puts back `ids` taken and not sent.
    fn put_back(&self, ids: Vec<EntryId>) {
        let mut queued = lock(&self.queued);
        if queued.is_empty() {
            self.queued_some.notify_one();
        }
        queued.extend(ids);
    }
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

/// What a read brought.
pub(crate) struct Read {
    /// The entries to hand out.
    pub(crate) entries: Vec<RedisStreamMetadata>,
    /// For a read of its own entries, the last id the reply had, of an entry trimmed
    /// since too: where the next such read starts.
    pub(crate) last: Option<String>,
}

/// What a read takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFrom {
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
        from: ReadFrom,
        after: &str,
        count: usize,
        block: Duration,
    ) -> redis::RedisResult<Read> {
        let _delivering = self.delivering.read().await;
        let command = |block: Option<Duration>| {
            // Blocking only once a read found nothing: a read that waits is one that
            // shutdown may have to cut short.
            let mut command = redis::cmd("XREADGROUP");
            command
                .arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(count);
            if let Some(block) = block {
                command.arg("BLOCK").arg(block.as_millis() as u64);
            }
            command.arg("STREAMS").arg(&*self.key).arg(after);
            command
        };
        // Read from the reply's values as they are: the crate's typed reply copies the
        // whole reply and hashes each entry's fields, the most of a read's cost.
        let mut reply = match self.read_with_acks(connection, command(None)).await? {
            Some(reply) => reply,
            None => command(None).query_async(connection).await?,
        };
        // Nothing new: now wait for it, with no acknowledgement held up by the wait.
        if from == ReadFrom::New && reply == Value::Nil {
            reply = self.wait_for_new(connection, command(Some(block))).await?;
        }
        let mut entries = Vec::new();
        let mut trimmed = Vec::new();
        let mut last = None;
        for (id, fields) in entries_of(reply)? {
            // Where the next read of its own entries starts; a read of new ones needs none.
            if from == ReadFrom::Own {
                last = Some(id.clone());
            }
            let key = EntryId::parse(&id).ok_or_else(|| malformed("an entry id", &id))?;
            match fields {
                Some(fields) => entries.push(RedisStreamMetadata::read(self.key.clone(), id, key, fields)),
                // An entry of its own trimmed from the stream since comes back with no
                // fields: nothing to handle, only to acknowledge.
                None if from == ReadFrom::Own => trimmed.push(id),
                None => entries.push(RedisStreamMetadata::read(self.key.clone(), id, key, Vec::new())),
            }
        }
        self.ack_trimmed(&trimmed).await?;
        // Held here already (a read of its own entries after a lost reply): handed out once.
        let mut held = lock(&self.held);
        entries.retain(|entry| held.insert(entry.key()));
        drop(held);
        Ok(Read { entries, last })
    }

    /// Acknowledges entries of its own trimmed from the stream since they were delivered:
    /// nothing to handle (their ids as the reply gave them).
    async fn ack_trimmed(&self, ids: &[String]) -> redis::RedisResult<()> {
        if !ids.is_empty() {
            self.trimmed_unhandled(ids.len());
            redis::cmd("XACK")
                .arg(&*self.key)
                .arg(&self.group)
                .arg(ids)
                .query_async::<u64>(&mut self.commands.clone())
                .await?;
        }
        Ok(())
    }

    /// Says that `count` entries delivered and not acknowledged were trimmed from the
    /// stream (a producer's `MAXLEN`, an `XDEL`) before they were handled: lost, with
    /// nothing left to handle, which no other count shows.
    fn trimmed_unhandled(&self, count: usize) {
        tracing::warn!(stream = %self.key, entries = count, "redis entries trimmed from the stream before they were handled: let go unhandled (trim only what the group has acknowledged)");
    }

    /// Sends `read`, a read that blocks, unless reads were told to stop; the connection's
    /// client id known meanwhile, so that [`Stream::unblock_reads`] can cut it short.
    async fn wait_for_new(
        &self,
        connection: &mut ConnectionManager,
        read: redis::Cmd,
    ) -> redis::RedisResult<Value> {
        if self.reads_stopped.is_cancelled() {
            return Ok(Value::Nil);
        }
        // Named first: an id asked of a connection that then reconnects may be another
        // client's (a restarted server numbers its clients again), and the name tells.
        static READS: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "longshore-read-{}-{}",
            std::process::id(),
            READS.fetch_add(1, Ordering::Relaxed)
        );
        let named: redis::RedisResult<((), i64)> = redis::pipe()
            .cmd("CLIENT")
            .arg("SETNAME")
            .arg(&name)
            .cmd("CLIENT")
            .arg("ID")
            .query_async(connection)
            .await;
        // Unknown (the commands refused, say by an ACL): the wait is not cut short.
        let _waiting = named.ok().map(|((), id)| Waiting::new(&self.waiting, id, name));
        if self.reads_stopped.is_cancelled() {
            return Ok(Value::Nil);
        }
        read.query_async(connection).await
    }

    /// Stops reads from waiting for new entries, and cuts short those waiting (`CLIENT
    /// UNBLOCK`: they end as if they had found nothing): at shutdown, which otherwise
    /// waits up to `block` for them.
    pub(crate) async fn unblock_reads(&self) {
        self.reads_stopped.cancel();
        let waiting: Vec<(i64, String)> = lock(&self.waiting).clone();
        let mut connection = self.commands.clone();
        for (id, name) in waiting {
            // `CLIENT LIST ID` gives one line: `id=7 addr=... name=longshore-read-... ...`.
            let listed: redis::RedisResult<String> = redis::cmd("CLIENT")
                .arg("LIST")
                .arg("ID")
                .arg(id)
                .query_async(&mut connection)
                .await;
            let ours = listed.is_ok_and(|line| {
                line.split(' ')
                    .any(|field| field.strip_prefix("name=") == Some(&name))
            });
            if !ours {
                continue;
            }
            let unblocked: redis::RedisResult<i64> = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .query_async(&mut connection)
                .await;
            if let Err(error) = unblocked {
                tracing::debug!(%error, "redis CLIENT UNBLOCK failed; the read ends after its block time");
            }
        }
    }

    /// Sends `read` (one that does not block) after an `XACK` of the acknowledgements
    /// queued, in one round trip; `None`, nothing sent, when none is queued. On an error
    /// the acknowledgements go back to the queue (sending one twice is harmless).
    async fn read_with_acks(
        &self,
        connection: &mut ConnectionManager,
        read: redis::Cmd,
    ) -> redis::RedisResult<Option<Value>> {
        let _sending = self.acks.sending.read().await;
        let ids = self.acks.take();
        if ids.is_empty() {
            return Ok(None);
        }
        // Each reply on its own: a refused XACK does not throw away the entries the read
        // claimed into this consumer's pending list.
        let sent: redis::RedisResult<Vec<redis::RedisResult<Value>>> = redis::pipe()
            .ignore_errors()
            .add_command(self.xack(&ids))
            .add_command(read)
            .query_async(connection)
            .await;
        let (acked, read) = match sent.map(<[_; 2]>::try_from) {
            Ok(Ok([acked, read])) => (acked, read),
            Ok(Err(replies)) => {
                self.acks.put_back(ids);
                return Err(malformed("an XACK and a read", &format!("{replies:?}")));
            }
            Err(error) => {
                self.acks.put_back(ids);
                return Err(error);
            }
        };
        match acked {
            Ok(_) => self.confirmed(&ids),
            // Sent again on their own, which lets go of them if the server refuses.
            Err(error) => {
                tracing::debug!(%error, entries = ids.len(), "redis XACK with a read failed; sending it on its own");
                self.acks.put_back(ids);
            }
        }
        read.map(Some)
    }

    /// Claims at most `count` entries other consumers were delivered and have not
    /// acknowledged for `claim_idle`: a dead consumer's. The scan goes on from where the
    /// last one stopped (Redis looks at ten times `count` pending entries a call), and
    /// entries this consumer holds itself are not handed out twice.
    pub(crate) async fn claim(&self, count: usize) -> redis::RedisResult<Vec<RedisStreamMetadata>> {
        let _delivering = self.delivering.read().await;
        let mut connection = self.commands.clone();
        let start = lock(&self.claim_cursor).clone();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&*self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(self.claim_idle.as_millis() as u64)
            .arg(&start)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut connection)
            .await?;
        *lock(&self.claim_cursor) = reply.next_stream_id;
        // Taken out of the pending list by the claim itself.
        if !reply.deleted_ids.is_empty() {
            self.trimmed_unhandled(reply.deleted_ids.len());
        }
        // Every id read before any is held: an error leaves nothing held and not handed out.
        let claimed = reply
            .claimed
            .into_iter()
            .map(|entry| match EntryId::parse(&entry.id) {
                Some(key) => Ok((entry, key)),
                None => Err(malformed("an entry id", &entry.id)),
            })
            .collect::<redis::RedisResult<Vec<_>>>()?;
        let mut held = lock(&self.held);
        // Held here already: handed out once.
        Ok(claimed
            .into_iter()
            .filter(|(_, key)| held.insert(*key))
            .map(|(entry, key)| self.metadata(entry, key))
            .collect())
    }

    /// Takes back at most `count` of this consumer's pending entries that it does not
    /// hold: those a read or claim whose reply was lost (a dropped connection, a server
    /// killed mid-reply) delivered to it unseen, which would otherwise wait `claim_idle`
    /// for a claim. Only ids are listed (`XPENDING`); the unseen ones are claimed back
    /// each while still this consumer's (one script), which passes over any acknowledged
    /// or claimed by another since the listing, so that an entry finished meanwhile is
    /// not handed out again. Also whether more may be left.
    pub(crate) async fn take_back_unseen(
        &self,
        count: usize,
    ) -> redis::RedisResult<(Vec<RedisStreamMetadata>, bool)> {
        // Once the reads and claims in flight have held what they delivered.
        let _alone = self.delivering.write().await;
        let mut connection = self.commands.clone();
        let mut start = "-".to_owned();
        loop {
            let page: StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(&*self.key)
                .arg(&self.group)
                .arg(&start)
                .arg("+")
                .arg(PENDING_PAGE)
                .arg(&self.consumer)
                .query_async(&mut connection)
                .await?;
            let full = page.ids.len() >= PENDING_PAGE;
            let unseen: Vec<String> = {
                let held = lock(&self.held);
                page.ids
                    .iter()
                    .filter(|pending| EntryId::parse(&pending.id).is_some_and(|key| !held.contains(&key)))
                    .map(|pending| pending.id.clone())
                    .collect()
            };
            if !unseen.is_empty() {
                let more = full || unseen.len() > count;
                // Each claimed only while still this consumer's: another may have claimed
                // it since the listing (after a lapse here), and keeps it.
                let reply: Value = redis::cmd("EVAL")
                    .arg(TAKE_BACK_OWNED)
                    .arg(1)
                    .arg(&*self.key)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(&unseen[..unseen.len().min(count)])
                    .query_async(&mut connection)
                    .await?;
                let mut claimed = Vec::new();
                let mut trimmed = Vec::new();
                for (id, fields) in stream_entries(reply)? {
                    let key = EntryId::parse(&id).ok_or_else(|| malformed("an entry id", &id))?;
                    match fields {
                        Some(fields) => claimed.push((id, key, fields)),
                        // Trimmed from the stream since: nothing to handle, only to
                        // acknowledge (as a read of its own entries does).
                        None => trimmed.push(id),
                    }
                }
                self.ack_trimmed(&trimmed).await?;
                let mut held = lock(&self.held);
                let entries = claimed
                    .into_iter()
                    .filter(|(_, key, _)| held.insert(*key))
                    .map(|(id, key, fields)| RedisStreamMetadata::read(self.key.clone(), id, key, fields))
                    .collect();
                return Ok((entries, more));
            }
            match page.ids.last() {
                Some(last) if full => start = format!("({}", last.id),
                _ => return Ok((Vec::new(), false)),
            }
        }
    }

    fn metadata(&self, entry: StreamId, key: EntryId) -> RedisStreamMetadata {
        let fields = entry
            .map
            .into_iter()
            .filter_map(|(name, value)| Some((name, field_value(value)?)))
            .collect();
        RedisStreamMetadata::read(self.key.clone(), entry.id, key, fields)
    }

    /// Acknowledges `ids`: queued to go with the next read, or, with no room in the
    /// queue, sent now.
    pub(crate) async fn ack(&self, ids: Vec<EntryId>) {
        if !self.acks.queue(&ids) {
            self.acknowledge(&ids).await;
        }
    }

    /// Sends what is queued on its own when no read took it within [`ACK_LINGER`] of
    /// its queueing, until `stop`.
    pub(crate) async fn send_acks(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = self.acks.queued_some.notified() => {}
                () = stop.cancelled() => return,
            }
            tokio::time::sleep(ACK_LINGER).await;
            let _sending = self.acks.sending.read().await;
            self.acknowledge_queued().await;
        }
    }

    /// Sends every acknowledgement queued, once those being sent are sent: at shutdown.
    pub(crate) async fn flush_acks(&self) {
        let _sending = self.acks.sending.write().await;
        self.acknowledge_queued().await;
    }

    async fn acknowledge_queued(&self) {
        let ids = self.acks.take();
        match self.send_xack(&ids).await {
            // The server away all this while: kept, for a read or the next try to take.
            Err(error) if transient(&error) => {
                tracing::debug!(%error, entries = ids.len(), "redis XACK failed for long; kept to send again");
                self.acks.put_back(ids);
            }
            _ => self.confirmed(&ids),
        }
    }

    fn xack(&self, ids: &[EntryId]) -> redis::Cmd {
        let mut command = redis::cmd("XACK");
        command.arg(&*self.key).arg(&self.group).arg(ids);
        command
    }

    /// Queued acknowledgements sent (or given up on): no longer held, and their room
    /// free again.
    fn confirmed(&self, ids: &[EntryId]) {
        self.let_go(ids);
        self.acks.room.add_permits(ids.len());
    }

    /// No longer held: acknowledged, or given up on.
    fn let_go(&self, ids: &[EntryId]) {
        let mut held = lock(&self.held);
        for id in ids {
            held.remove(id);
        }
    }

    /// Acknowledges `ids`, trying again while the server is away for as long as
    /// `claim_idle`; then lets them go either way. An acknowledgement never sent loses
    /// nothing: the entries are claimed again and handled twice.
    async fn acknowledge(&self, ids: &[EntryId]) {
        let _ = self.send_xack(ids).await;
        self.let_go(ids);
    }

    /// Sets the idle time of those of `ids` still pending for this consumer to `idle`
    /// (zero: kept from claims; `claim_idle`: claimable at once), each checked and
    /// claimed in one step; returns those.
    async fn set_idle_owned(&self, ids: &[String], idle: Duration) -> redis::RedisResult<Vec<String>> {
        let mut connection = self.commands.clone();
        redis::cmd("EVAL")
            .arg(SET_IDLE_OWNED)
            .arg(1)
            .arg(&*self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(idle.as_millis() as u64)
            .arg(ids)
            .query_async(&mut connection)
            .await
    }

    /// Sends an `XACK` of `ids`, trying again while the server is away for a third of
    /// `claim_idle` (logged: the entries may be handled again): the last error then.
    async fn send_xack(&self, ids: &[EntryId]) -> redis::RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let command = self.xack(ids);
        let backoff = longshore::RetryPolicy::new(u32::MAX)
            .initial_backoff(Duration::from_millis(50))
            .max_backoff(Duration::from_secs(2));
        let give_up = tokio::time::Instant::now() + self.claim_idle / 3;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut connection = self.commands.clone();
            let acked: redis::RedisResult<u64> = command.query_async(&mut connection).await;
            match acked {
                Ok(_) => return Ok(()),
                Err(error) if transient(&error) && tokio::time::Instant::now() < give_up => {
                    tracing::debug!(%error, entries = ids.len(), "redis XACK failed; trying again");
                    tokio::time::sleep(backoff.backoff(attempt)).await;
                }
                Err(error) => {
                    tracing::warn!(%error, entries = ids.len(), "redis XACK failed; unless sent later, the entries will be claimed and handled again");
                    return Err(error);
                }
            }
        }
    }

    /// Resets the idle time of the entries held here, each only while this consumer still
    /// owns it (checked and claimed in one script: never taken back from a consumer that
    /// claimed it after a lapse here). Those another consumer took are let go.
    pub(crate) async fn keep_held(&self) -> redis::RedisResult<()> {
        let _renewing = self.renewing.lock().await;
        let ids: Vec<String> = lock(&self.held).iter().map(EntryId::to_string).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let owned = self.set_idle_owned(&ids, Duration::ZERO).await?;
        if owned.len() < ids.len() {
            let owned: std::collections::HashSet<&String> = owned.iter().collect();
            let mut held = lock(&self.held);
            for id in ids.iter().filter(|id| !owned.contains(id)) {
                tracing::warn!(stream = %self.key, id, "entry claimed by another consumer while handled here: it will be handled twice");
                if let Some(key) = EntryId::parse(id) {
                    held.remove(&key);
                }
            }
        }
        Ok(())
    }

    /// Makes `ids` claimable by any consumer at once (their idle time set to
    /// `claim_idle`): what this consumer will not handle, at shutdown.
    pub(crate) async fn hand_back(&self, ids: &[EntryId]) {
        if ids.is_empty() {
            return;
        }
        let _renewing = self.renewing.lock().await;
        // Only those this consumer still owns: one another consumer claimed after a lapse
        // here is being handled there, and must not be made claimable by a third.
        let named: Vec<String> = ids.iter().map(EntryId::to_string).collect();
        if let Err(error) = self.set_idle_owned(&named, self.claim_idle).await {
            tracing::warn!(%error, entries = ids.len(), "redis entries not handed back; claimable after claim_idle");
        }
        self.let_go(ids);
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
            // Unknown (after an XDEL in the range): the last reading stands, rather than
            // a 0 that reads as caught up.
            if let Some(lag) = group.lag {
                self.metrics.lag.set(lag as i64);
            }
        }
        Ok(())
    }
}

/// Sets to `ARGV[3]` milliseconds the idle time of each id (`ARGV[4..]`) still pending for
/// consumer `ARGV[2]` of group `ARGV[1]`, and returns those.
const SET_IDLE_OWNED: &str = r"
local owned = {}
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #pending > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    table.insert(owned, ARGV[i])
  end
end
return owned
";

/// Claims back (with their fields) the entries among `ARGV[3..]` still pending for
/// consumer `ARGV[2]` of group `ARGV[1]`, one by one, each checked and claimed in one
/// step: never one another consumer claimed meanwhile. An array of entries.
const TAKE_BACK_OWNED: &str = r"
local claimed = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #pending > 0 then
    for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i])) do
      table.insert(claimed, entry)
    end
  end
end
return claimed
";

/// An entry's id and fields, as read.
type ReadEntry = (String, Option<Vec<(String, Bytes)>>);

/// The entries of an `XREADGROUP` reply (one stream), each its id and its fields, `None`
/// for an entry trimmed since it was delivered. RESP2 gives the streams as an array of
/// pairs, RESP3 as a map; no entries is nil.
fn entries_of(reply: Value) -> redis::RedisResult<Vec<ReadEntry>> {
    let streams: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) => match <[Value; 2]>::try_from(pair) {
                    Ok([_, entries]) => Ok(entries),
                    Err(pair) => Err(malformed("a stream's key and entries", &format!("{pair:?}"))),
                },
                other => Err(malformed("a stream's key and entries", &format!("{other:?}"))),
            })
            .collect::<redis::RedisResult<_>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        other => return Err(malformed("an XREADGROUP reply", &format!("{other:?}"))),
    };
    let mut read = Vec::new();
    for entries in streams {
        read.extend(stream_entries(entries)?);
    }
    Ok(read)
}

/// One stream's entries, as `[id, fields]` pairs: a read's part for a stream, or an
/// `XCLAIM` reply (where an entry deleted meanwhile may come as nil: left out).
fn stream_entries(entries: Value) -> redis::RedisResult<Vec<ReadEntry>> {
    let Value::Array(entries) = entries else {
        return Err(malformed("a stream's entries", &format!("{entries:?}")));
    };
    let mut read = Vec::with_capacity(entries.len());
    for entry in entries {
        let [id, fields] = match entry {
            Value::Nil => continue,
            Value::Array(entry) => {
                <[Value; 2]>::try_from(entry).map_err(|entry| malformed("an entry", &format!("{entry:?}")))?
            }
            other => return Err(malformed("an entry", &format!("{other:?}"))),
        };
        let id = match id {
            Value::BulkString(id) => String::from_utf8(id)
                .map_err(|id| malformed("an entry id", &format!("{:?}", id.as_bytes())))?,
            Value::SimpleString(id) => id,
            other => return Err(malformed("an entry id", &format!("{other:?}"))),
        };
        let fields = match fields {
            Value::Nil => None,
            Value::Array(values) => Some(field_pairs(values)),
            Value::Map(pairs) => Some(
                pairs
                    .into_iter()
                    .filter_map(|(name, value)| Some((field_name(name)?, field_value(value)?)))
                    .collect(),
            ),
            other => return Err(malformed("an entry's fields", &format!("{other:?}"))),
        };
        read.push((id, fields));
    }
    Ok(read)
}

/// `[name, value, name, value, ...]` as pairs; a name that is not text is read lossily.
fn field_pairs(values: Vec<Value>) -> Vec<(String, Bytes)> {
    let mut pairs = Vec::with_capacity(values.len() / 2);
    let mut values = values.into_iter();
    while let (Some(name), Some(value)) = (values.next(), values.next()) {
        if let (Some(name), Some(value)) = (field_name(name), field_value(value)) {
            pairs.push((name, value));
        }
    }
    pairs
}

fn field_name(name: Value) -> Option<String> {
    match name {
        Value::BulkString(name) => Some(
            String::from_utf8(name)
                .unwrap_or_else(|name| String::from_utf8_lossy(name.as_bytes()).into_owned()),
        ),
        Value::SimpleString(name) => Some(name),
        _ => None,
    }
}

fn field_value(value: Value) -> Option<Bytes> {
    match value {
        Value::BulkString(bytes) => Some(Bytes::from(bytes)),
        Value::SimpleString(text) => Some(Bytes::from(text)),
        _ => None,
    }
}

fn malformed(what: &str, got: &str) -> RedisError {
    RedisError::from((
        ErrorKind::UnexpectedReturnType,
        "unexpected reply",
        format!("{what}: {got}"),
    ))
}

/// Whether trying again may help: the server away or slow, not a command it refused.
fn transient(error: &redis::RedisError) -> bool {
    error.is_io_error() || error.is_timeout() || error.is_connection_dropped()
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(from: u64, n: u64) -> Vec<EntryId> {
        (from..from + n)
            .map(|seq| EntryId::parse(&format!("1-{seq}")).unwrap())
            .collect()
    }

    #[test]
    fn acknowledgements_are_queued_only_within_the_room_the_pipeline_gives() {
        let acks = AckQueue::default();
        assert!(!acks.queue(&ids(0, 1)), "queued before the pipeline gave room");
        acks.allow(10);
        acks.allow(99);
        assert!(acks.queue(&ids(0, 6)));
        assert!(!acks.queue(&ids(6, 5)), "queued past the room");
        assert!(acks.queue(&ids(6, 4)));
        assert_eq!(acks.take(), ids(0, 10));
        // Taken is not yet sent: the room comes back only once they are.
        assert!(
            !acks.queue(&ids(10, 1)),
            "room back before the acknowledgements were sent"
        );
        acks.room.add_permits(10);
        assert!(acks.queue(&ids(10, 10)));
    }
}
