//! The Redis Streams source against a real Redis: a dead consumer's entries claimed by
//! another once idle, a stream deleted and made again read again, a job longer than
//! `claim_idle` not claimed away, a hand-back leaving what another consumer claimed, a
//! read's slow reply not taken back by another read, a read whose reply was lost taken
//! back at once, the lag gauges exactly those documented, and bad settings refused
//! naming the field.

mod common;
#[path = "../../../test-support/cut_proxy.rs"]
mod cut_proxy;
#[path = "../../../test-support/documented.rs"]
mod documented;
#[path = "../../../tests/common/mod.rs"]
mod http;
#[path = "../../../test-support/prometheus.rs"]
mod prometheus;
#[path = "../../../test-support/receiving.rs"]
mod receiving;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{add, connection, unfinished, Redis};
use longshore::source::{Acknowledger, Source};
use longshore::{BoxError, Handler, Pipeline};
use longshore_redis::{RedisStreamConfig, RedisStreamMessage, RedisStreamMetadata, RedisStreamSource};
use receiving::receive_in_task;

/// Records each entry's id and the consumer that handled it, after `sleep`.
struct Record {
    name: &'static str,
    sleep: Duration,
    handled: Handled,
}

/// What [`Record`]s handled: (entry id, consumer).
type Handled = Arc<Mutex<Vec<(String, &'static str)>>>;

/// A pipeline of consumer `name` of `stream` (see [`config`]), its entries recorded into
/// `handled` after `sleep` each.
async fn recording(
    server: &Redis,
    stream: &str,
    name: &'static str,
    sleep: Duration,
    handled: &Handled,
) -> Pipeline {
    let record = Record {
        name,
        sleep,
        handled: handled.clone(),
    };
    Pipeline::builder(
        RedisStreamSource::connect(config(server, stream, name))
            .await
            .unwrap(),
        record,
    )
    .start()
    .unwrap()
}

impl Handler for Record {
    type Item = longshore_redis::Bytes;
    type Metadata = RedisStreamMetadata;

    async fn handle_message(&self, message: &mut RedisStreamMessage) -> Result<(), BoxError> {
        tokio::time::sleep(self.sleep).await;
        self.handled
            .lock()
            .unwrap()
            .push((message.metadata().id().to_owned(), self.name));
        Ok(())
    }
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(server: &Redis, stream: &str, consumer: &str) -> RedisStreamConfig {
    RedisStreamConfig::new(server.url(), stream, "g")
        .consumer(consumer)
        .block(Duration::from_millis(100))
        .claim_idle(Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_entries_are_claimed_by_another_once_idle() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    add(&mut db, "claims", (0..5).map(|n| n.to_string())).await;
    // A consumer takes every entry and dies without acknowledging (dropped, not shut down).
    let dead = RedisStreamSource::connect(config(&server, "claims", "dead"))
        .await
        .unwrap();
    let taken = dead
        .receive(std::num::NonZeroUsize::new(10).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.len(), 5);
    drop((taken, dead));
    let handled = Handled::default();
    let started = Instant::now();
    let pipeline = recording(&server, "claims", "alive", Duration::ZERO, &handled).await;
    until("the dead consumer's entries handled", async || {
        handled.lock().unwrap().len() == 5
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "claimed before they were idle"
    );
    until("all acknowledged", async || {
        unfinished(&mut db, "claims", "g").await == 0
    })
    .await;
    pipeline.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_and_made_again_by_a_producer_is_read_again() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    add(&mut db, "flushed", (0..5).map(|n| n.to_string())).await;
    let handled = Handled::default();
    let pipeline = recording(&server, "flushed", "one", Duration::ZERO, &handled).await;
    until("the first entries handled", async || {
        handled.lock().unwrap().len() == 5
    })
    .await;
    // Gone with its group (a flush, an eviction, a restart without persistence); a
    // producer's add makes the stream again, without the group.
    let _: () = longshore_redis::redis::cmd("DEL")
        .arg("flushed")
        .query_async(&mut db)
        .await
        .unwrap();
    add(&mut db, "flushed", (5..10).map(|n| n.to_string())).await;
    until("the entries added since handled", async || {
        handled.lock().unwrap().len() == 10
    })
    .await;
    until("all acknowledged", async || {
        unfinished(&mut db, "flushed", "g").await == 0
    })
    .await;
    pipeline.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_claim_idle_is_not_claimed_away() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    let handled = Handled::default();
    let first = recording(&server, "long", "slow", Duration::from_secs(3), &handled).await;
    add(&mut db, "long", ["job".to_owned()]).await;
    // Once the slow consumer holds it, a second consumer claims whatever is idle 1 s.
    until("the job delivered", async || {
        unfinished(&mut db, "long", "g").await == 1 && pending(&mut db, "long").await == 1
    })
    .await;
    let second = recording(&server, "long", "eager", Duration::ZERO, &handled).await;
    until("the job done", async || {
        unfinished(&mut db, "long", "g").await == 0
    })
    .await;
    let handled = handled.lock().unwrap().clone();
    assert_eq!(
        handled.len(),
        1,
        "the job was claimed while still handled: {handled:?}"
    );
    assert_eq!(handled[0].1, "slow");
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

/// Entries of `stream` delivered and not acknowledged.
async fn pending(db: &mut longshore_redis::redis::aio::MultiplexedConnection, stream: &str) -> i64 {
    let reply: longshore_redis::redis::Value = longshore_redis::redis::cmd("XPENDING")
        .arg(stream)
        .arg("g")
        .query_async(db)
        .await
        .unwrap();
    match reply {
        longshore_redis::redis::Value::Array(items) => match items.first() {
            Some(longshore_redis::redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gauges_are_exactly_those_documented_and_bad_settings_are_refused() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    add(&mut db, "lag", (0..3).map(|n| n.to_string())).await;
    let _source =
        RedisStreamSource::connect(config(&server, "lag", "c").lag_interval(Duration::from_millis(100)))
            .await
            .unwrap();
    let value = |name: &str| documented::gauge(name, ("stream", "lag"));
    until("the lag read", async || {
        value("longshore_redis_group_lag") == Some(3.0)
    })
    .await;
    assert_eq!(value("longshore_redis_stream_length"), Some(3.0));
    assert_eq!(value("longshore_redis_group_pending"), Some(0.0));
    assert_eq!(documented::assert_exactly_documented("longshore_redis_"), 3);
    // The dashboard's panels of this source show it, through a real Prometheus.
    prometheus::assert_panels_show("longshore_redis_", 2).await;

    let error = RedisStreamSource::connect(config(&server, "lag", "c").block(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid source.block: must be shorter than source.claim_idle"
    );
    let error = RedisStreamSource::connect(RedisStreamConfig::new(server.url(), "", "g"))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "invalid source.stream: must not be empty");
    // A key that is not a stream.
    let _: () = longshore_redis::redis::cmd("SET")
        .arg("plain")
        .arg("x")
        .query_async(&mut db)
        .await
        .unwrap();
    let error = RedisStreamSource::connect(config(&server, "plain", "c"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with("redis creating the consumer group"),
        "{error}"
    );
}

/// Reads waiting on the server for new entries (`blocked_clients` of `INFO clients`).
async fn blocked_reads(db: &mut longshore_redis::redis::aio::MultiplexedConnection) -> u64 {
    let info: String = longshore_redis::redis::cmd("INFO")
        .arg("clients")
        .query_async(db)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_go_out_while_the_read_waits_and_shutdown_cuts_the_wait_short() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    add(&mut db, "idle", (0..5).map(|n| n.to_string())).await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let slow = Record {
        name: "slow",
        sleep: Duration::from_millis(100),
        handled: handled.clone(),
    };
    // A read waits up to 5 s for new entries: far longer than anything below may take.
    let config = config(&server, "idle", "waiting")
        .block(Duration::from_secs(5))
        .claim_idle(Duration::from_secs(30));
    let pipeline = Pipeline::builder(RedisStreamSource::connect(config).await.unwrap(), slow)
        .start()
        .unwrap();
    until("all five handled", async || handled.lock().unwrap().len() == 5).await;
    // The five were read at once and the next read waits on the empty stream: their
    // acknowledgements cannot go with a read, and go on their own.
    let handled_at = Instant::now();
    until("every entry acknowledged", async || {
        pending(&mut db, "idle").await == 0
    })
    .await;
    assert!(
        handled_at.elapsed() < Duration::from_secs(2),
        "acknowledged only {:?} after being handled: behind the waiting read",
        handled_at.elapsed()
    );
    until("a read waiting on the server", async || {
        blocked_reads(&mut db).await > 0
    })
    .await;
    let stopping = Instant::now();
    let report = pipeline.shutdown().await.unwrap();
    assert_eq!(report.successful, 5);
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}: it waited for the read's block time",
        stopping.elapsed()
    );
    assert_eq!(
        blocked_reads(&mut db).await,
        0,
        "a read still waits after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_left_at_shutdown_are_claimable_by_another_consumer_at_once() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    add(&mut db, "handback", (0..4).map(|n| n.to_string())).await;
    // claim_idle of 30 s: only the hand-back can let another consumer have them soon.
    let slow_claims = |name| config(&server, "handback", name).claim_idle(Duration::from_secs(30));
    let leaving = RedisStreamSource::connect(slow_claims("leaving")).await.unwrap();
    let read = leaving
        .receive(std::num::NonZeroUsize::new(2).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.len(), 2);
    // The two read are handed back (released, as at a shutdown cut short); the two never
    // read wait in the stream for anyone.
    leaving.acknowledger().release(read).await;
    leaving.shutdown().await;
    drop(leaving);
    let handled = Arc::new(Mutex::new(Vec::new()));
    let next = Record {
        name: "next",
        sleep: Duration::ZERO,
        handled: handled.clone(),
    };
    let started = Instant::now();
    let pipeline = Pipeline::builder(
        RedisStreamSource::connect(slow_claims("next")).await.unwrap(),
        next,
    )
    .start()
    .unwrap();
    until("all four handled by the next consumer", async || {
        handled.lock().unwrap().len() == 4
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for claim_idle"
    );
    pipeline.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_back_leaves_an_entry_another_consumer_claimed_meanwhile() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    add(&mut db, "stolen", (0..2).map(|n| n.to_string())).await;
    let leaving =
        RedisStreamSource::connect(config(&server, "stolen", "leaving").claim_idle(Duration::from_secs(30)))
            .await
            .unwrap();
    let read = leaving
        .receive(std::num::NonZeroUsize::new(2).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.len(), 2);
    let ids: Vec<String> = read.iter().map(|m| m.metadata().id().to_owned()).collect();
    // Another consumer claims the first (its idle time lapsed here, as in a long pause),
    // and handles it; then this one hands both back, as at a shutdown cut short.
    let _: longshore_redis::redis::Value = longshore_redis::redis::cmd("XCLAIM")
        .arg("stolen")
        .arg("g")
        .arg("thief")
        .arg(0)
        .arg(&ids[0])
        .arg("JUSTID")
        .query_async(&mut db)
        .await
        .unwrap();
    leaving.acknowledger().release(read).await;
    let pending: Vec<(String, String, u64, u64)> = longshore_redis::redis::cmd("XPENDING")
        .arg("stolen")
        .arg("g")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut db)
        .await
        .unwrap();
    let (owner, idle): (Vec<&str>, Vec<u64>) = pending.iter().map(|p| (p.1.as_str(), p.2)).unzip();
    // The claimed one stays with its new owner, not made claimable by a third consumer
    // while handled there; the other is handed back, claimable at once.
    assert_eq!(owner, ["thief", "leaving"]);
    assert!(idle[0] < 30_000 && idle[1] >= 30_000, "{pending:?}");
    leaving.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reply_to_one_read_is_not_taken_back_by_another_and_handed_out_twice() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    add(&mut db, "slow", ["first".to_owned()]).await;
    let upstream = server.url().trim_start_matches("redis://").to_owned();
    let (proxy, cuts) = cut_proxy::start(upstream).await;
    let config = RedisStreamConfig::new(format!("redis://{proxy}"), "slow", "g")
        .consumer("me")
        .block(Duration::from_secs(20))
        .claim_idle(Duration::from_secs(60));
    let source = Arc::new(RedisStreamSource::connect(config).await.unwrap());
    let demand = std::num::NonZeroUsize::new(5).unwrap();
    // Past its own entries.
    assert_eq!(source.receive(demand).await.unwrap().unwrap().len(), 1);
    // One read waits at the server; the answer it gets is slow to come back.
    cuts.delay(&[b"XREADGROUP", b"BLOCK"], Duration::from_secs(2));
    let mut slow = receive_in_task(&source, 5);
    until("a read waiting at the server", async || {
        let clients: String = longshore_redis::redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut db)
            .await
            .unwrap();
        clients
            .lines()
            .any(|l| l.contains("cmd=xreadgroup") && l.split(' ').any(|f| f == "flags=b"))
    })
    .await;
    // New entries, added at once: delivered to that read at the server, its answer still
    // on the way.
    let mut adds = longshore_redis::redis::pipe();
    for n in 0..3 {
        adds.cmd("XADD")
            .arg("slow")
            .arg("*")
            .arg("payload")
            .arg(n)
            .ignore();
    }
    adds.atomic().query_async::<()>(&mut db).await.unwrap();
    // Meanwhile another read's answer is lost: the source looks for entries delivered to
    // it unseen, and the three are in its pending list, not yet held.
    cuts.arm(&[b"XREADGROUP", b"$1\r\n>\r\n"]);
    assert!(source.receive(demand).await.is_err(), "the answer cut");
    let mut next = receive_in_task(&source, 5);
    let ids = |messages: &[RedisStreamMessage]| -> Vec<String> {
        messages.iter().map(|m| m.metadata().id().to_owned()).collect()
    };
    // Taken back by the next receive, then finished, the three came again with the slow
    // answer: handed out twice with no crash. The take-back waits for the read in flight.
    let (taken_back, slow) = tokio::select! {
        taken_back = &mut next => {
            let taken_back = taken_back.unwrap();
            let taken_ids = ids(&taken_back);
            source.acknowledger().ack(taken_back, Vec::new()).await;
            until("acknowledged", async || unfinished(&mut db, "slow", "g").await <= 1).await;
            (taken_ids, ids(&slow.await.unwrap()))
        }
        slow = &mut slow => (Vec::new(), ids(&slow.unwrap())),
    };
    next.abort();
    assert_eq!(slow.len(), 3, "the slow answer's entries");
    assert!(
        taken_back.iter().all(|id| !slow.contains(id)),
        "handed out twice: {taken_back:?} and {slow:?}"
    );
}

/// Adds 30 entries to `stream`, which a consumer of `config` (whose claim_idle is long:
/// no claim brings them back within a test) reads and never acknowledges: killed. Their
/// ids, in order.
async fn taken_then_killed(
    db: &mut longshore_redis::redis::aio::MultiplexedConnection,
    stream: &str,
    config: RedisStreamConfig,
) -> Vec<String> {
    add(db, stream, (0..30).map(|n| n.to_string())).await;
    let first = RedisStreamSource::connect(config).await.unwrap();
    let taken = first
        .receive(std::num::NonZeroUsize::new(30).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.len(), 30);
    taken.iter().map(|m| m.metadata().id().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_takes_back_its_own_entries_past_trimmed_ones() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    let me = || config(&server, "own", "me").claim_idle(Duration::from_secs(60));
    // Killed with all 30 unacknowledged; then the first 20 are deleted from the stream:
    // the next reads of its own entries bring two pages of trimmed ones first.
    let ids = taken_then_killed(&mut db, "own", me()).await;
    longshore_redis::redis::cmd("XDEL")
        .arg("own")
        .arg(&ids[..20])
        .query_async::<u64>(&mut db)
        .await
        .unwrap();
    let again = RedisStreamSource::connect(me()).await.unwrap();
    let back = tokio::time::timeout(
        Duration::from_secs(10),
        again.receive(std::num::NonZeroUsize::new(10).unwrap()),
    )
    .await
    .expect("its own entries after the trimmed ones, not a wait for claim_idle")
    .unwrap()
    .unwrap();
    let back: Vec<String> = back.iter().map(|m| m.metadata().id().to_owned()).collect();
    assert_eq!(back, ids[20..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_at_once_read_at_once_each_entry_handed_out_once() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    add(&mut db, "twice", ["first".to_owned()]).await;
    let source = Arc::new(
        RedisStreamSource::connect(
            config(&server, "twice", "both")
                .block(Duration::from_secs(20))
                .claim_idle(Duration::from_secs(60)),
        )
        .await
        .unwrap(),
    );
    // The first entry read and handed out: the source is past its own entries.
    let one = source
        .receive(std::num::NonZeroUsize::new(1).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.len(), 1);
    let (a, b) = (receive_in_task(&source, 5), receive_in_task(&source, 5));
    // Two producers' receives: two blocking reads at the server at once, each on a
    // connection of its own.
    until("two reads waiting at the server", async || {
        let clients: String = longshore_redis::redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut db)
            .await
            .unwrap();
        // Blocked (`flags=b`) in a read: not merely a connection whose last command was one.
        clients
            .lines()
            .filter(|l| l.contains("cmd=xreadgroup") && l.split(' ').any(|f| f == "flags=b"))
            .count()
            == 2
    })
    .await;
    add(&mut db, "twice", ["second".to_owned()]).await;
    add(&mut db, "twice", ["third".to_owned()]).await;
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut got: Vec<&[u8]> = a.iter().chain(&b).map(|m| &m.data()[..]).collect();
    got.sort();
    assert_eq!(got, [&b"second"[..], b"third"]);
    assert_eq!((a.len(), b.len()), (1, 1), "each read its own entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumers_own_entries_go_once_to_receives_at_once() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    let me = || config(&server, "owntwice", "me").claim_idle(Duration::from_secs(60));
    taken_then_killed(&mut db, "owntwice", me()).await;
    // Restarted: two producers' receives take back its own 30 entries, five at a time.
    let again = Arc::new(RedisStreamSource::connect(me()).await.unwrap());
    let takes: Vec<_> = (0..2)
        .map(|_| {
            let source = again.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..3 {
                    let got = source
                        .receive(std::num::NonZeroUsize::new(5).unwrap())
                        .await
                        .unwrap()
                        .unwrap();
                    ids.extend(got.iter().map(|m| m.metadata().id().to_owned()));
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for take in takes {
        ids.extend(take.await.unwrap());
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (count, ids.len()),
        (30, 30),
        "each of its own entries handed out once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_xack_does_not_hold_back_the_entries_read_with_it() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    // A user who may do everything but acknowledge: each XACK is refused.
    longshore_redis::redis::cmd("ACL")
        .arg(&["SETUSER", "noack", "on", ">secret", "~*", "&*", "+@all", "-xack"])
        .query_async::<()>(&mut db)
        .await
        .unwrap();
    add(&mut db, "refused", (0..200).map(|n| n.to_string())).await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let record = Record {
        name: "noack",
        sleep: Duration::ZERO,
        handled: handled.clone(),
    };
    let url = server.url().replace("redis://", "redis://noack:secret@");
    // claim_idle of 30 s: entries stuck unhandled in this consumer's pending list would
    // come back only after it.
    let config = RedisStreamConfig::new(url, "refused", "g")
        .consumer("noack")
        .block(Duration::from_millis(100))
        .claim_idle(Duration::from_secs(30));
    let source = RedisStreamSource::connect(config).await.unwrap();
    let pipeline = Pipeline::builder(source, record)
        .processors(longshore::Processors::new(1).max_demand(10))
        .start()
        .unwrap();
    until("all 200 handled, the XACKs refused", async || {
        handled.lock().unwrap().len() >= 200
    })
    .await;
    pipeline.shutdown().await.unwrap();
    let mut ids: Vec<String> = handled.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "each entry handled once");
    assert_eq!(pending(&mut db, "refused").await, 200, "the XACKs were refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_read_whose_reply_was_lost_are_taken_back_at_once_and_those_held_are_not() {
    let server = Redis::start();
    let mut db = connection(&server.url()).await;
    add(&mut db, "lostreply", (0..60).map(|n| n.to_string())).await;
    let upstream = server.url().trim_start_matches("redis://").to_owned();
    let (proxy, cuts) = cut_proxy::start(upstream).await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let record = Record {
        name: "me",
        sleep: Duration::from_millis(50),
        handled: handled.clone(),
    };
    // claim_idle of 60 s: entries left in this consumer's pending list unseen would come
    // back only after it.
    let config = RedisStreamConfig::new(format!("redis://{proxy}"), "lostreply", "g")
        .consumer("me")
        .block(Duration::from_millis(100))
        .claim_idle(Duration::from_secs(60));
    let source = RedisStreamSource::connect(config).await.unwrap();
    let pipeline = Pipeline::builder(source, record)
        .processors(longshore::Processors::new(1).max_demand(10))
        .start()
        .unwrap();
    until("the first entry handled", async || {
        !handled.lock().unwrap().is_empty()
    })
    .await;
    // With entries in flight, the next read of new entries (`>`) delivers them to this
    // consumer's pending list, and its reply never arrives.
    cuts.arm(&[b"XREADGROUP", b"$1\r\n>\r\n"]);
    until("all 60 handled after the lost reply", async || {
        handled.lock().unwrap().len() >= 60
    })
    .await;
    assert_eq!(cuts.made(), 1, "a read's reply was cut");
    until("all acknowledged", async || {
        unfinished(&mut db, "lostreply", "g").await == 0
    })
    .await;
    pipeline.shutdown().await.unwrap();
    let mut ids: Vec<String> = handled.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 60, "each entry handled");
    assert_eq!(
        handled.lock().unwrap().len(),
        60,
        "none handled twice: the entries in flight were not taken back"
    );
}
