//! The queue table source against a real PostgreSQL: a row failed for good is kept with
//! its error (or deleted once a dead-letter destination has it), an insert wakes a
//! waiting consumer at once through NOTIFY, a job longer than the lease is not leased
//! to anyone else, the migration is the one shipped, the lag gauges are exactly
//! those documented, rows of one key keep their order through retries, and a lease
//! that times out is cancelled.

mod common;
#[path = "../../../test-support/documented.rs"]
mod documented;
#[path = "../../../tests/common/mod.rs"]
mod http;
#[path = "../../../test-support/prometheus.rs"]
mod prometheus;
#[path = "../../../test-support/receiving.rs"]
mod receiving;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, enqueue, rows, server};
use longshore::{BoxError, DeadLetter, Handler, Message, Permanent, Pipeline, RetryPolicy};
use longshore_postgres::{PgQueueConfig, PgQueueMessage, PgQueueMetadata, PgQueueSource};

/// Fails payloads starting with `bad` for good; sleeps `sleep` on each other, and first
/// waits for `open` (when set) to be `true`.
struct Judge {
    sleep: Duration,
    open: Option<tokio::sync::watch::Receiver<bool>>,
    handled: Handled,
}

impl Handler for Judge {
    type Item = longshore_postgres::Bytes;
    type Metadata = PgQueueMetadata;

    async fn handle_message(&self, message: &mut PgQueueMessage) -> Result<(), BoxError> {
        if message.data().starts_with(b"bad") {
            return Err(Permanent::new("a bad row").into());
        }
        if let Some(open) = &self.open {
            open.clone().wait_for(|&open| open).await?;
        }
        tokio::time::sleep(self.sleep).await;
        self.handled
            .lock()
            .unwrap()
            .push((message.metadata().id(), message.attempt(), Instant::now()));
        Ok(())
    }
}

/// What a [`Judge`] handled: (row id, attempt, when).
type Handled = Arc<Mutex<Vec<(i64, u32, Instant)>>>;

fn judge(sleep: Duration) -> (Judge, Handled) {
    let handled = Arc::new(Mutex::new(Vec::new()));
    (
        Judge {
            sleep,
            open: None,
            handled: handled.clone(),
        },
        handled,
    )
}

struct Counted(Arc<AtomicU64>);

impl DeadLetter<PgQueueMetadata> for Counted {
    async fn dead_letter(&self, messages: &mut [Message<(), PgQueueMetadata>]) -> Result<(), BoxError> {
        self.0.fetch_add(messages.len() as u64, Ordering::Relaxed);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rows_are_kept_with_their_error_or_deleted_once_dead_lettered() {
    let server = server().await;
    let db = client(&server.url()).await;
    enqueue(
        &db,
        "failures",
        vec![b"good 1".to_vec(), b"bad 2".to_vec(), b"good 3".to_vec()],
    )
    .await;
    let config = PgQueueConfig::new(server.url()).queue("failures");
    let (handler, handled) = judge(Duration::ZERO);
    let pipeline = Pipeline::builder(PgQueueSource::connect(config.clone()).await.unwrap(), handler)
        .retry(RetryPolicy::new(3))
        .start()
        .unwrap();
    until("two rows handled", async || handled.lock().unwrap().len() == 2).await;
    until("the bad row kept as failed", async || {
        rows(&db, "failures").await == (0, 1)
    })
    .await;
    pipeline.shutdown().await.unwrap();
    let kept = db
        .query_one(
            "SELECT last_error, attempts FROM longshore_queue WHERE queue = 'failures'",
            &[],
        )
        .await
        .unwrap();
    let error: String = kept.get(0);
    assert!(error.contains("a bad row"), "{error}");
    assert_eq!(kept.get::<_, i32>(1), 1, "failed for good: not tried again");

    // With a dead-letter destination, the table keeps nothing.
    enqueue(&db, "dead", vec![b"bad 4".to_vec()]).await;
    let written = Arc::new(AtomicU64::new(0));
    let (handler, _) = judge(Duration::ZERO);
    let pipeline = Pipeline::builder(
        PgQueueSource::connect(config.queue("dead")).await.unwrap(),
        handler,
    )
    .dead_letter(Counted(written.clone()))
    .start()
    .unwrap();
    until("the bad row deleted", async || rows(&db, "dead").await == (0, 0)).await;
    assert_eq!(written.load(Ordering::Relaxed), 1);
    pipeline.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_leased_too_often_without_an_outcome_is_kept_failed_unhandled() {
    let server = server().await;
    let db = client(&server.url()).await;
    enqueue(&db, "poison", vec![b"good 1".to_vec(), b"good 2".to_vec()]).await;
    // The second row was leased 20 times, each lease ended by its consumer's death.
    db.execute(
        "UPDATE longshore_queue SET attempts = 20 WHERE queue = 'poison' AND payload = 'good 2'",
        &[],
    )
    .await
    .unwrap();
    let config = PgQueueConfig::new(server.url()).queue("poison");
    let (handler, handled) = judge(Duration::ZERO);
    let pipeline = Pipeline::builder(PgQueueSource::connect(config).await.unwrap(), handler)
        .retry(RetryPolicy::new(3))
        .start()
        .unwrap();
    until("the first row handled and the other kept as failed", async || {
        rows(&db, "poison").await == (0, 1)
    })
    .await;
    pipeline.shutdown().await.unwrap();
    assert_eq!(
        handled.lock().unwrap().len(),
        1,
        "the row leased too often was handled"
    );
    let kept = db
        .query_one(
            "SELECT last_error, attempts FROM longshore_queue WHERE queue = 'poison'",
            &[],
        )
        .await
        .unwrap();
    let error: String = kept.get(0);
    assert!(
        error.contains("delivered 21 times, over retry.max_deliveries (20)"),
        "{error}"
    );
    assert_eq!(kept.get::<_, i32>(1), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_wakes_a_waiting_consumer_at_once() {
    let server = server().await;
    let db = client(&server.url()).await;
    // Polls once a minute: only NOTIFY can bring a row in sooner.
    let config = PgQueueConfig::new(server.url())
        .queue("wake")
        .poll_interval(Duration::from_secs(60));
    let (handler, handled) = judge(Duration::ZERO);
    let pipeline = Pipeline::builder(PgQueueSource::connect(config).await.unwrap(), handler)
        .start()
        .unwrap();
    // Let it find the queue empty and wait: its first lease is answered, then it waits.
    until("the source ready", async || pipeline_ready(&db).await).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let inserted = Instant::now();
    enqueue(&db, "wake", vec![b"job".to_vec()]).await;
    until("the job handled", async || !handled.lock().unwrap().is_empty()).await;
    let (_, attempt, at) = handled.lock().unwrap()[0];
    assert_eq!(attempt, 1);
    assert!(
        at - inserted < Duration::from_secs(10),
        "handled {:?} after the insert",
        at - inserted
    );
    pipeline.shutdown().await.unwrap();
}

/// Whether the server answers (the source's first lease has had its chance).
async fn pipeline_ready(db: &longshore_postgres::tokio_postgres::Client) -> bool {
    db.simple_query("SELECT 1").await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_its_lease_is_not_leased_to_another_consumer() {
    let server = server().await;
    let db = client(&server.url()).await;
    enqueue(&db, "long", vec![b"job".to_vec()]).await;
    // Leases of 1 s, a job of 3 s; a second consumer looking every 50 ms.
    let config = PgQueueConfig::new(server.url())
        .queue("long")
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(50));
    let (handler, handled) = judge(Duration::from_secs(3));
    let first = Pipeline::builder(PgQueueSource::connect(config.clone()).await.unwrap(), handler)
        .start()
        .unwrap();
    until("the job leased", async || {
        rows(&db, "long").await == (1, 0) && leased(&db, "long").await
    })
    .await;
    let (other, other_handled) = judge(Duration::ZERO);
    let second = Pipeline::builder(PgQueueSource::connect(config).await.unwrap(), other)
        .start()
        .unwrap();
    until("the job done", async || rows(&db, "long").await == (0, 0)).await;
    assert_eq!(handled.lock().unwrap().len(), 1);
    assert!(
        other_handled.lock().unwrap().is_empty(),
        "the job was leased to the second consumer while the first handled it"
    );
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

/// A row another transaction holds locked does not hold up the extension of the other
/// leases. The lock stands for this consumer's own delete: the extension waited for its
/// rows, deadlocked with it, and the delete could lose and be given up, its rows, handled,
/// handled again after a graceful stop. (The locked row itself is not extended meanwhile,
/// and is said to be: its lease may lapse, and the row be handled again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_locked_elsewhere_does_not_hold_up_the_extension_of_the_other_leases() {
    let server = server().await;
    let db = client(&server.url()).await;
    enqueue(&db, "locked", vec![b"a".to_vec(), b"b".to_vec()]).await;
    // Leases of 1 s, extended every third of it, for jobs held until the check is done.
    let config = PgQueueConfig::new(server.url())
        .queue("locked")
        .lease(Duration::from_secs(1));
    let (open, gate) = tokio::sync::watch::channel(false);
    let (mut handler, handled) = judge(Duration::ZERO);
    handler.open = Some(gate);
    let pipeline = Pipeline::builder(PgQueueSource::connect(config).await.unwrap(), handler)
        .start()
        .unwrap();
    let leased_now = async || {
        let row = db
            .query_one(
                "SELECT count(*) FROM longshore_queue WHERE queue = 'locked' AND visible_at > now()",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    until("both leased", async || leased_now().await == 2).await;
    // Another transaction locks one of them for longer than a lease.
    let mut other = client(&server.url()).await;
    let locking = other.transaction().await.unwrap();
    let locked: i64 = locking
        .query_one(
            "SELECT id FROM longshore_queue WHERE queue = 'locked' ORDER BY id LIMIT 1 FOR UPDATE",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Still on its first lease: extended all along, never let go to be leased again.
    let other = db
        .query_opt(
            "SELECT id, visible_at > now(), attempts FROM longshore_queue WHERE queue = 'locked' AND id <> $1",
            &[&locked],
        )
        .await
        .unwrap()
        .expect("the other row, held by the handler, is still in the table");
    let (other_id, other_leased, attempts): (i64, bool, i32) = (other.get(0), other.get(1), other.get(2));
    locking.rollback().await.unwrap();
    open.send_replace(true);
    assert!(
        other_leased && attempts == 1,
        "the other row's lease lapsed while the extension waited for the locked one \
         (leased now: {other_leased}, leased {attempts} times)"
    );
    until("both done", async || rows(&db, "locked").await == (0, 0)).await;
    let handled_other = handled.lock().unwrap().iter().filter(|h| h.0 == other_id).count();
    assert_eq!(handled_other, 1, "the other row was handled twice");
    pipeline.shutdown().await.unwrap();
}

/// Whether a row of `queue` is leased now.
async fn leased(db: &longshore_postgres::tokio_postgres::Client, queue: &str) -> bool {
    db.query_one(
        "SELECT count(*) FROM longshore_queue WHERE queue = $1 AND visible_at > now()",
        &[&queue],
    )
    .await
    .unwrap()
    .get::<_, i64>(0)
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_migration_is_the_one_run_and_bad_settings_are_refused() {
    // Another table, made by the migration and consumed.
    let server = server().await;
    let config = PgQueueConfig::new(server.url()).table("invoice_queue").queue("q");
    PgQueueSource::migrate(&config).await.unwrap();
    PgQueueSource::migrate(&config)
        .await
        .expect("a migration runs again");
    let db = client(&server.url()).await;
    db.execute(
        "INSERT INTO invoice_queue (queue, payload) VALUES ('q', 'x')",
        &[],
    )
    .await
    .unwrap();
    let (handler, handled) = judge(Duration::ZERO);
    let pipeline = Pipeline::builder(PgQueueSource::connect(config).await.unwrap(), handler)
        .start()
        .unwrap();
    until("the row handled", async || handled.lock().unwrap().len() == 1).await;
    pipeline.shutdown().await.unwrap();
    let error = PgQueueSource::connect(PgQueueConfig::new("host=127.0.0.1").table("orders; drop table x"))
        .await
        .unwrap_err();
    assert!(error.to_string().starts_with("invalid source.table"), "{error}");
    let error = PgQueueSource::connect(PgQueueConfig::new(server.url()).table("missing_table"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("run PgQueueSource::migrate"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gauges_are_exactly_those_documented() {
    let server = server().await;
    let db = client(&server.url()).await;
    enqueue(&db, "lag", vec![b"1".to_vec(), b"2".to_vec()]).await;
    let config = PgQueueConfig::new(server.url())
        .queue("lag")
        .lag_interval(Duration::from_millis(100));
    let _source = PgQueueSource::connect(config).await.unwrap();
    let value = |name: &str| documented::gauge(name, ("queue", "lag"));
    until("the depth read", async || {
        value("longshore_postgres_queue_ready_rows") == Some(2.0)
    })
    .await;
    assert_eq!(value("longshore_postgres_queue_leased_rows"), Some(0.0));
    assert_eq!(value("longshore_postgres_queue_failed_rows"), Some(0.0));
    assert_eq!(documented::assert_exactly_documented("longshore_postgres_"), 4);
    // The dashboard's panels of this source show it, through a real Prometheus.
    prometheus::assert_panels_show("longshore_postgres_", 2).await;
}

/// Waits, for at most `within`, until two connections' last statement is a lease and
/// each is as `state` says (a `pg_stat_activity` condition).
/// The start of the lease statement, and of the look for the next row to be visible.
const LEASE: &str = "WITH next AS";
const NEXT_VISIBLE: &str = "SELECT EXTRACT(EPOCH FROM min(visible_at)";

/// Waits until two connections in `state` ran last a statement starting with `query`.
async fn leases_are(
    db: &longshore_postgres::tokio_postgres::Client,
    state: &str,
    query: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE {state} AND query LIKE '{query}%'");
    loop {
        let leases: i64 = db.query_one(&sql, &[]).await.unwrap().get(0);
        if leases == 2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "two leases with {state}: {leases} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_at_once_lease_at_once_on_connections_of_their_own() {
    let server = server().await;
    let db = client(&server.url()).await;
    enqueue(
        &db,
        "together",
        (0..4).map(|n| format!("{n}").into_bytes()).collect(),
    )
    .await;
    let source = Arc::new(
        PgQueueSource::connect(PgQueueConfig::new(server.url()).queue("together"))
            .await
            .unwrap(),
    );
    // The table locked against the leases' updates: each lease waits at the database,
    // where one connection can run one statement at a time.
    let mut locker = client(&server.url()).await;
    let lock = locker.transaction().await.unwrap();
    lock.execute("LOCK TABLE longshore_queue IN EXCLUSIVE MODE", &[])
        .await
        .unwrap();
    let (a, b) = (
        receiving::receive_in_task(&source, 2),
        receiving::receive_in_task(&source, 2),
    );
    // Well within the statement timeout (10 s), which would fail the receive first.
    leases_are(&db, "wait_event_type = 'Lock'", LEASE, Duration::from_secs(5)).await;
    lock.commit().await.unwrap();
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut ids: Vec<i64> = a.iter().chain(&b).map(|m| m.metadata().id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "each row leased once: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_insert_of_many_rows_wakes_every_waiting_lease() {
    let server = server().await;
    let db = client(&server.url()).await;
    // Only a NOTIFY can wake a lease within the test: polls are a minute apart.
    let source = Arc::new(
        PgQueueSource::connect(
            PgQueueConfig::new(server.url())
                .queue("woken")
                .poll_interval(Duration::from_secs(60)),
        )
        .await
        .unwrap(),
    );
    let (a, b) = (
        receiving::receive_in_task(&source, 10),
        receiving::receive_in_task(&source, 10),
    );
    // Both leased and found nothing: two lease connections idle after looking for the
    // next row to become visible (there is none).
    leases_are(&db, "state = 'idle'", NEXT_VISIBLE, Duration::from_secs(10)).await;
    // One statement, one transaction: one notification for the 100 rows.
    enqueue(
        &db,
        "woken",
        (0..100).map(|n| format!("{n}").into_bytes()).collect(),
    )
    .await;
    let both = tokio::time::timeout(Duration::from_secs(10), async {
        (a.await.unwrap(), b.await.unwrap())
    })
    .await
    .expect("both leases woken by the one insert, not by their poll a minute later");
    assert_eq!((both.0.len(), both.1.len()), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_source_cannot_read_is_refused_and_one_altered_or_with_a_null_fails_no_other_row() {
    let server = server().await;
    let db = client(&server.url()).await;
    let make = |table: &str, payload: &str, enqueued_at: &str| {
        format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, queue varchar(100) NOT NULL DEFAULT 'default', \
             payload {payload}, enqueued_at {enqueued_at} NOT NULL DEFAULT now(), \
             visible_at timestamptz NOT NULL DEFAULT now(), attempts integer NOT NULL DEFAULT 0, \
             failed_at timestamptz, last_error varchar(1000))"
        )
    };
    // Made by hand, the payload as text: refused at start, naming the column.
    db.batch_execute(&make("text_queue", "text NOT NULL", "timestamptz"))
        .await
        .unwrap();
    let error = PgQueueSource::connect(PgQueueConfig::new(server.url()).table("text_queue"))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "postgres queue table text_queue: column payload is text, expected bytea (see longshore_postgres::migration)"
    );

    // Made by hand without NOT NULL on a column each lease needs: refused at start, naming
    // it (a NULL attempts came back with each lease unhandled, a NULL visible_at was
    // never leased).
    db.batch_execute(
        &make("nullable_queue", "bytea", "timestamptz")
            .replace("attempts integer NOT NULL", "attempts integer"),
    )
    .await
    .unwrap();
    let error = PgQueueSource::connect(PgQueueConfig::new(server.url()).table("nullable_queue"))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "postgres queue table nullable_queue: column attempts is nullable, expected NOT NULL (see longshore_postgres::migration)"
    );

    // Made by hand with types the source reads all the same (varchar, a timestamp
    // without time zone), and no NOT NULL on the payload: a NULL payload keeps its row
    // failed, saying why, and the rows leased with it are handled.
    db.batch_execute(&make("lenient_queue", "bytea", "timestamp"))
        .await
        .unwrap();
    db.batch_execute("INSERT INTO lenient_queue (payload) VALUES ('a'), (NULL), ('b')")
        .await
        .unwrap();
    let config = PgQueueConfig::new(server.url()).table("lenient_queue");
    let (handler, handled) = judge(Duration::ZERO);
    let pipeline = Pipeline::builder(PgQueueSource::connect(config).await.unwrap(), handler)
        .start()
        .unwrap();
    until("the two readable rows handled and deleted", async || {
        handled.lock().unwrap().len() == 2
            && db
                .query_one("SELECT count(*) FROM lenient_queue", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
    })
    .await;
    let left = db
        .query(
            "SELECT failed_at IS NOT NULL, last_error, attempts FROM lenient_queue",
            &[],
        )
        .await
        .unwrap();
    pipeline.shutdown().await.unwrap();
    assert_eq!(left.len(), 1, "the readable rows deleted once handled");
    let (failed, error, attempts): (bool, String, i32) = (left[0].get(0), left[0].get(1), left[0].get(2));
    assert!(failed, "the row with a NULL payload kept failed");
    assert!(
        error.starts_with("the queue table's column payload does not read"),
        "{error}"
    );
    assert_eq!(attempts, 1);

    // Altered while the source runs, after its lease was prepared: the lease is refused
    // with nothing leased, saying why, never a panic.
    let config = PgQueueConfig::new(server.url()).table("altered_queue").queue("q");
    PgQueueSource::migrate(&config).await.unwrap();
    let source = PgQueueSource::connect(config).await.unwrap();
    db.batch_execute("INSERT INTO altered_queue (queue, payload) VALUES ('q', 'first')")
        .await
        .unwrap();
    use longshore::source::Source;
    let demand = std::num::NonZeroUsize::new(10).unwrap();
    assert_eq!(source.receive(demand).await.unwrap().unwrap().len(), 1);
    db.batch_execute(
        "ALTER TABLE altered_queue ALTER COLUMN attempts TYPE bigint; \
         INSERT INTO altered_queue (queue, payload) VALUES ('q', 'second')",
    )
    .await
    .unwrap();
    // The first lease may meet the statement prepared before the change ("cached plan
    // must not change result type"); the next one prepares it again and reads the table.
    let mut errors = Vec::new();
    for _ in 0..2 {
        errors.push(source.receive(demand).await.unwrap_err().to_string());
    }
    assert!(
        errors[1].contains("the queue table's column attempts is int8 now, expected integer; nothing leased"),
        "{errors:?}"
    );
    let second = db
        .query_one(
            "SELECT attempts, visible_at <= now() FROM altered_queue WHERE payload = 'second'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (second.get::<_, i64>(0), second.get::<_, bool>(1)),
        (0, true),
        "the row after the change was not leased"
    );
    // Altered back: leased again, not refused on the statement prepared meanwhile.
    db.batch_execute("ALTER TABLE altered_queue ALTER COLUMN attempts TYPE integer")
        .await
        .unwrap();
    let mut leased = None;
    for _ in 0..2 {
        if let Ok(batch) = source.receive(demand).await {
            leased = batch;
            break;
        }
    }
    let leased = leased.expect("the row leased once the table reads again");
    assert_eq!(leased[0].data().as_ref(), b"second");
}

/// Fails each row's first attempt; records each attempt.
struct FailFirst(Handled);

impl Handler for FailFirst {
    type Item = longshore_postgres::Bytes;
    type Metadata = PgQueueMetadata;

    async fn handle_message(&self, message: &mut PgQueueMessage) -> Result<(), BoxError> {
        self.0
            .lock()
            .unwrap()
            .push((message.metadata().id(), message.attempt(), Instant::now()));
        match message.attempt() {
            1 => Err("not yet".into()),
            _ => Ok(()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_leased_when_its_backoff_ends_not_at_the_next_poll() {
    let server = server().await;
    let db = client(&server.url()).await;
    // Polls once a minute, and a retry makes no NOTIFY.
    let config = PgQueueConfig::new(server.url())
        .queue("backoff")
        .poll_interval(Duration::from_secs(60));
    let handled = Handled::default();
    let pipeline = Pipeline::builder(
        PgQueueSource::connect(config).await.unwrap(),
        FailFirst(handled.clone()),
    )
    .retry(RetryPolicy::new(3).initial_backoff(Duration::from_millis(300)))
    .start()
    .unwrap();
    until("the source ready", async || pipeline_ready(&db).await).await;
    enqueue(&db, "backoff", vec![b"job".to_vec()]).await;
    until("the row tried twice", async || handled.lock().unwrap().len() == 2).await;
    let attempts = handled.lock().unwrap().clone();
    let waited = attempts[1].2 - attempts[0].2;
    assert_eq!((attempts[0].1, attempts[1].1), (1, 2));
    // The backoff starts at the database's clock, a little after the first attempt
    // began by this one's: a few milliseconds either way.
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "tried again {waited:?} after its first attempt, with a backoff of 300 ms"
    );
    until("the row deleted", async || rows(&db, "backoff").await == (0, 0)).await;
    pipeline.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_one_key_keep_their_order_through_retries() {
    let server = server().await;
    let db = client(&server.url()).await;
    enqueue(&db, "ordered", vec![b"first".to_vec(), b"second".to_vec()]).await;
    let ids: Vec<i64> = db
        .query(
            "SELECT id FROM longshore_queue WHERE queue = 'ordered' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    // Each row fails its first attempt. Handed back to the table with its backoff, the
    // first would be tried again after the second: retried in process, its key held.
    let handled = Handled::default();
    let pipeline = Pipeline::builder(
        PgQueueSource::connect(PgQueueConfig::new(server.url()).queue("ordered"))
            .await
            .unwrap(),
        FailFirst(handled.clone()),
    )
    .partition_by(|_| 0)
    .retry(RetryPolicy::new(3).initial_backoff(Duration::from_millis(300)))
    .start()
    .unwrap();
    until("both rows deleted", async || rows(&db, "ordered").await == (0, 0)).await;
    pipeline.shutdown().await.unwrap();
    let calls: Vec<(i64, u32)> = handled
        .lock()
        .unwrap()
        .iter()
        .map(|&(id, attempt, _)| (id, attempt))
        .collect();
    assert_eq!(calls, vec![(ids[0], 1), (ids[0], 2), (ids[1], 1), (ids[1], 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_times_out_is_cancelled_and_leases_no_row_for_nobody() {
    let server = server().await;
    let db = client(&server.url()).await;
    enqueue(&db, "locked", vec![b"job".to_vec()]).await;
    // A lock the lease waits for beyond its timeout (an index built, a migration).
    let mut locker = client(&server.url()).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE longshore_queue IN SHARE MODE")
        .await
        .unwrap();
    let (handler, handled) = judge(Duration::ZERO);
    let config = PgQueueConfig::new(server.url()).queue("locked");
    let pipeline = Pipeline::builder(PgQueueSource::connect(config).await.unwrap(), handler)
        .start()
        .unwrap();
    let waiting = async || -> Option<(i32, std::time::SystemTime)> {
        let row = db
            .query_opt(
                "SELECT pid, query_start FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE 'WITH next AS%' \
                 ORDER BY query_start LIMIT 1",
                &[],
            )
            .await
            .unwrap()?;
        Some((row.get(0), row.get(1)))
    };
    let mut lease = None;
    until("a lease waiting for the lock", async || {
        lease = waiting().await;
        lease.is_some()
    })
    .await;
    // Past its timeout, the lease is cancelled on the server (one tried again after it
    // may wait in turn): otherwise it would take the row once the lock goes, for nobody.
    until("that lease cancelled", async || waiting().await != lease).await;
    lock.commit().await.unwrap();
    until("the row handled", async || !handled.lock().unwrap().is_empty()).await;
    pipeline.shutdown().await.unwrap();
    assert_eq!(handled.lock().unwrap()[0].1, 1, "handled on its first lease");
}
