//! A loopback TCP proxy that, once armed, lets one request through and cuts its
//! connection as the answer comes back, the answer thrown away: a server that did the
//! work and a client that never heard of it, as when a connection drops or a server is
//! killed mid-reply. It can also hold one answer back for a while: a slow reply (a large
//! one, a busy network or client). Included by tests (`#[path]`), not a crate.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The proxy's switch and its count of cuts.
#[derive(Debug, Default)]
pub struct Cuts {
    /// Armed: the next request containing every one of `needles` has its answer cut.
    armed: AtomicBool,
    needles: std::sync::Mutex<Vec<Vec<u8>>>,
    made: AtomicUsize,
    /// The next request containing every one of these has its answer held back so long.
    delay: std::sync::Mutex<Option<(Vec<Vec<u8>>, std::time::Duration)>>,
}

impl Cuts {
    /// Cuts the answer to the next request that contains each of `needles`, once.
    pub fn arm(&self, needles: &[&[u8]]) {
        *self.needles.lock().unwrap() = needles.iter().map(|n| n.to_vec()).collect();
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Holds back by `delay` the answer to the next request that contains each of
    /// `needles`, once.
    pub fn delay(&self, needles: &[&[u8]], delay: std::time::Duration) {
        *self.delay.lock().unwrap() = Some((needles.iter().map(|n| n.to_vec()).collect(), delay));
    }

    /// How many answers were cut.
    pub fn made(&self) -> usize {
        self.made.load(Ordering::SeqCst)
    }

    /// Whether `request` is the one to cut; disarms if it is.
    fn take(&self, request: &[u8]) -> bool {
        contains_all(request, &self.needles.lock().unwrap())
            && self
                .armed
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    /// How long to hold back the answer to `request`, if it is the one; disarms if it is.
    fn take_delay(&self, request: &[u8]) -> Option<std::time::Duration> {
        let mut delay = self.delay.lock().unwrap();
        let (needles, _) = delay.as_ref()?;
        contains_all(request, needles).then(|| delay.take().expect("armed").1)
    }
}

/// Whether `request` contains each of `needles`.
fn contains_all(request: &[u8], needles: &[Vec<u8>]) -> bool {
    needles.iter().all(|needle| {
        request
            .windows(needle.len())
            .any(|window| window == needle.as_slice())
    })
}

/// Starts a proxy to `upstream` (`host:port`); its `host:port`, and its switch.
pub async fn start(upstream: String) -> (String, Arc<Cuts>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let cuts = Arc::new(Cuts::default());
    let switch = cuts.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (upstream, cuts) = (upstream.clone(), cuts.clone());
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut from_client, mut to_client) = inbound.split();
                let (mut from_server, mut to_server) = outbound.split();
                let cutting = AtomicBool::new(false);
                let delaying = std::sync::Mutex::new(None);
                let requests = async {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let n = from_client.read(&mut buffer).await?;
                        if n == 0 {
                            return Ok::<(), std::io::Error>(());
                        }
                        if cuts.take(&buffer[..n]) {
                            cutting.store(true, Ordering::SeqCst);
                        }
                        if let Some(delay) = cuts.take_delay(&buffer[..n]) {
                            *delaying.lock().unwrap() = Some(delay);
                        }
                        to_server.write_all(&buffer[..n]).await?;
                    }
                };
                let answers = async {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let n = from_server.read(&mut buffer).await?;
                        if n == 0 {
                            return Ok(());
                        }
                        if cutting.load(Ordering::SeqCst) {
                            cuts.made.fetch_add(1, Ordering::SeqCst);
                            // Both sides dropped with the answer unsent.
                            return Err(std::io::Error::other("cut"));
                        }
                        let delay = delaying.lock().unwrap().take();
                        if let Some(delay) = delay {
                            tokio::time::sleep(delay).await;
                        }
                        to_client.write_all(&buffer[..n]).await?;
                    }
                };
                let _ = tokio::try_join!(requests, answers);
            });
        }
    });
    (address, switch)
}
