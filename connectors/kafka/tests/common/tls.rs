//! TLS for the broker tests: a certificate authority and a broker certificate made with
//! the `openssl` command, and a TLS-terminating proxy in front of a plaintext broker (tansu
//! 0.6 refuses `--cert` with `--key`, so it cannot serve TLS itself).

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;

/// A certificate authority's certificate, and a broker certificate it signed for
/// `127.0.0.1` and `localhost`.
pub struct Certificates {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certificates {
    /// Makes them in `dir`. Fails the test, saying why, when `openssl` is missing.
    pub fn generate(dir: &Path) -> Certificates {
        let file = |name: &str| dir.join(name).to_str().expect("a UTF-8 path").to_owned();
        let (ca, ca_key, key, csr, cert, ext) = (
            file("ca.pem"),
            file("ca.key"),
            file("broker.key"),
            file("broker.csr"),
            file("broker.pem"),
            file("san.cnf"),
        );
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &ca_key,
                "-out",
                &ca,
                "-subj",
                "/CN=longshore-test-ca",
                "-days",
                "2",
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=localhost",
            ],
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("the `openssl` command is needed to make test certificates: {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Certificates {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        }
    }
}

/// Listens on a free loopback port, accepts TLS with `certificates`, and forwards each
/// connection to the plaintext broker port `upstream`, on a thread of its own (for the
/// life of the test process). Returns its port.
pub fn proxy(certificates: &Certificates, upstream: u16) -> u16 {
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("TLS acceptor");
    acceptor
        .set_private_key_file(&certificates.key, SslFiletype::PEM)
        .expect("broker key");
    acceptor
        .set_certificate_chain_file(&certificates.cert)
        .expect("broker certificate");
    let acceptor = acceptor.build();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let ssl = Ssl::new(acceptor.context()).unwrap();
                tokio::spawn(async move {
                    let mut tls = SslStream::new(ssl, client).unwrap();
                    // A client that refuses the certificate ends here.
                    if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                        return;
                    }
                    if let Ok(mut broker) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                    }
                });
            }
        });
    });
    port
}
