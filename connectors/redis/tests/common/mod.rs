//! What the Redis tests share: a server of their own, and entries added and counted
//! through a plain connection.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

#[path = "../../../../test-support/redis.rs"]
mod redis_server;

pub use redis_server::Redis;

use longshore_redis::redis;
use redis::aio::MultiplexedConnection;

pub async fn connection(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Adds `payloads` to `stream`, in order, as the `payload` field.
pub async fn add(
    connection: &mut MultiplexedConnection,
    stream: &str,
    payloads: impl IntoIterator<Item = String>,
) {
    let mut pipe = redis::pipe();
    for payload in payloads {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("payload")
            .arg(payload)
            .ignore();
    }
    pipe.query_async::<()>(connection).await.unwrap();
}

/// Entries of `stream` the group has not acknowledged, delivered or not: 0 once all is
/// done.
pub async fn unfinished(connection: &mut MultiplexedConnection, stream: &str, group: &str) -> u64 {
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(connection)
        .await
        .unwrap_or(redis::Value::Nil);
    let reply: redis::streams::StreamInfoGroupsReply = match redis::FromRedisValue::from_redis_value(groups) {
        Ok(reply) => reply,
        Err(_) => return u64::MAX,
    };
    match reply.groups.iter().find(|g| g.name == group) {
        Some(group) => (group.pending + group.lag.unwrap_or(usize::MAX / 2)) as u64,
        None => u64::MAX,
    }
}
