//! A loopback TCP proxy that holds each request's bytes for a delay before passing them
//! on: every call to the server behind it takes that much longer, as over a real network.
//! Included by tests and benches (`#[path]`), not a crate.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts a proxy to `upstream` (`host:port`) adding `delay` to every request; its
/// address as `http://127.0.0.1:<port>`.
pub async fn start(upstream: String, delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut from_client, mut to_client) = inbound.split();
                let (mut from_server, mut to_server) = outbound.split();
                // Read as the bytes come, each chunk stamped; passed on `delay` after it
                // came, as a network's latency: a request in several chunks is delayed
                // once, not once a chunk.
                let (chunks, mut delayed) = tokio::sync::mpsc::unbounded_channel();
                let reading = async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let n = from_client.read(&mut buffer).await?;
                        let at = tokio::time::Instant::now();
                        if chunks.send((at, buffer[..n].to_vec())).is_err() || n == 0 {
                            return Ok::<(), std::io::Error>(());
                        }
                    }
                };
                let requests = async move {
                    while let Some((at, chunk)) = delayed.recv().await {
                        if chunk.is_empty() {
                            break;
                        }
                        tokio::time::sleep_until(at + delay).await;
                        to_server.write_all(&chunk).await?;
                    }
                    to_server.shutdown().await
                };
                let answers = tokio::io::copy(&mut from_server, &mut to_client);
                let _ = tokio::try_join!(reading, requests, answers);
            });
        }
    });
    format!("http://{address}")
}
