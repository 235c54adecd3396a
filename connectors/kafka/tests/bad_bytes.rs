//! Bad bytes from the broker never stop a consumer: a header name that is not UTF-8,
//! written with a hand-encoded Produce request (librdkafka's producer only takes UTF-8
//! names), and null header values kept apart from empty ones. In a test binary of its
//! own: a consumer created after such a record in the same process was seen to crawl
//! under 300 ms round trips (see the hardening issue's note), so the two are kept apart
//! until that is understood.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cluster, committed, config, eventually, produce, Keep};
use longshore::Pipeline;
use longshore_kafka::KafkaSource;

const WAIT: Duration = Duration::from_secs(90);

/// Kafka's zigzag varint.
fn varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// CRC-32C (Castagnoli), as record batches carry it.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A header as written on the wire: any bytes for its name, a value or null.
type RawHeader<'a> = (&'a [u8], Option<&'a [u8]>);

/// Writes one record batch (magic 2) to `partition` with a hand-encoded Produce request
/// (v3), the way a client in another language may: names of headers are bytes on the
/// wire, and librdkafka's own producer only takes UTF-8 ones.
fn produce_raw(bootstrap: &str, topic: &str, partition: i32, records: &[(&[u8], Vec<RawHeader<'_>>)]) {
    use std::io::{Read, Write};
    let mut encoded = Vec::new();
    for (delta, (value, headers)) in records.iter().enumerate() {
        let mut body = vec![0u8]; // attributes
        varint(&mut body, 0); // timestamp delta
        varint(&mut body, delta as i64);
        varint(&mut body, -1); // no key
        varint(&mut body, value.len() as i64);
        body.extend_from_slice(value);
        varint(&mut body, headers.len() as i64);
        for (name, value) in headers {
            varint(&mut body, name.len() as i64);
            body.extend_from_slice(name);
            match value {
                Some(value) => {
                    varint(&mut body, value.len() as i64);
                    body.extend_from_slice(value);
                }
                None => varint(&mut body, -1),
            }
        }
        varint(&mut encoded, body.len() as i64);
        encoded.extend(body);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut checked = Vec::new();
    checked.extend(0i16.to_be_bytes()); // attributes
    checked.extend((records.len() as i32 - 1).to_be_bytes()); // last offset delta
    checked.extend(now.to_be_bytes());
    checked.extend(now.to_be_bytes());
    checked.extend((-1i64).to_be_bytes()); // producer id
    checked.extend((-1i16).to_be_bytes()); // producer epoch
    checked.extend((-1i32).to_be_bytes()); // base sequence
    checked.extend((records.len() as i32).to_be_bytes());
    checked.extend(encoded);
    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // base offset
    batch.extend((4 + 1 + 4 + checked.len() as i32).to_be_bytes());
    batch.extend((-1i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend(crc32c(&checked).to_be_bytes());
    batch.extend(checked);

    let mut request = Vec::new();
    request.extend(0i16.to_be_bytes()); // Produce
    request.extend(3i16.to_be_bytes());
    request.extend(7i32.to_be_bytes()); // correlation id
    request.extend((4i16).to_be_bytes());
    request.extend(b"test");
    request.extend((-1i16).to_be_bytes()); // no transactional id
    request.extend(1i16.to_be_bytes()); // acks
    request.extend(10_000i32.to_be_bytes());
    request.extend(1i32.to_be_bytes());
    request.extend((topic.len() as i16).to_be_bytes());
    request.extend(topic.as_bytes());
    request.extend(1i32.to_be_bytes());
    request.extend(partition.to_be_bytes());
    request.extend((batch.len() as i32).to_be_bytes());
    request.extend(batch);
    let address = bootstrap.split(',').next().unwrap();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(&(request.len() as i32).to_be_bytes()).unwrap();
    stream.write_all(&request).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut answer = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut answer).unwrap();
    // correlation id, topics (1), name, partitions (1), index, then the error code.
    let at = 4 + 4 + 2 + topic.len() + 4 + 4;
    let error = i16::from_be_bytes([answer[at], answer[at + 1]]);
    assert_eq!(error, 0, "the broker refused the hand-written batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_never_stops_the_consumer() {
    let _serial = common::serial().await;
    let cluster = cluster("headers", 2);
    let bootstrap = cluster.bootstrap_servers();
    produce(&bootstrap, "headers", 2, 100, 10);
    // On partition 0: a header named with bytes that are not UTF-8, and one record with a
    // null and an empty header value.
    let bad: &[u8] = b"\xff\xfename";
    produce_raw(
        &bootstrap,
        "headers",
        0,
        &[
            (b"bad", vec![(bad, Some(b"v")), (b"kept", Some(b"k"))]),
            (b"nulls", vec![(b"null", None), (b"empty", Some(b""))]),
        ],
    );
    produce(&bootstrap, "headers", 2, 100, 10);

    let keep = Arc::new(Keep::default());
    let source = KafkaSource::new(config(&bootstrap, "headers-group", "headers")).unwrap();
    let pipeline = Pipeline::builder(source, keep.clone()).start().unwrap();
    // Everything behind the bad record, on every partition, handled and committed.
    let ends = vec![102, 100];
    eventually(WAIT, || {
        committed(&bootstrap, "headers-group", "headers", 2) == ends
    })
    .await;
    pipeline.shutdown().await.unwrap();

    let records = keep.0.lock().unwrap().clone();
    assert_eq!(records.len(), 202, "every record delivered once");
    let find = |payload: &[u8]| {
        records
            .iter()
            .find(|r| r.payload() == Some(payload))
            .unwrap()
            .clone()
    };
    let bad = find(b"bad");
    assert_eq!(bad.unreadable_headers(), 1);
    assert_eq!(bad.headers(), [("kept".to_owned(), Some(b"k".to_vec()))]);
    let nulls = find(b"nulls");
    assert_eq!(
        nulls.headers(),
        [("null".to_owned(), None), ("empty".to_owned(), Some(Vec::new()))]
    );
}
