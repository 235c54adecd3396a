//! LocalStack (an SQS-compatible server) as a separate process on a loopback port, one
//! per test or bench binary. Shared by the tests and the benchmark.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where scripts/test installs LocalStack; `LONGSHORE_LOCALSTACK` (its python) overrides.
fn python() -> PathBuf {
    if let Ok(path) = std::env::var("LONGSHORE_LOCALSTACK") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/longshore-localstack-4.9.2/bin/python")
}

/// The LocalStack of this test binary: started on first use, stopped when the test
/// binary exits (it watches its stdin, which the test process holds).
pub struct LocalStack {
    pub endpoint: String,
    _child: Child,
}

/// Dummy credentials and the endpoint, for this process and the consumers it starts.
fn set_env(endpoint: &str) {
    for (name, value) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL_SQS", endpoint),
    ] {
        std::env::set_var(name, value);
    }
}

pub fn localstack() -> &'static LocalStack {
    static SERVER: OnceLock<LocalStack> = OnceLock::new();
    SERVER.get_or_init(|| {
        let python = python();
        assert!(
            python.exists(),
            "LocalStack not found at {}: run scripts/test (it installs LocalStack 4.9.2 under \
             ~/.cache), or set LONGSHORE_LOCALSTACK to its python",
            python.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let volume = std::env::temp_dir().join(format!("longshore-localstack-{port}"));
        std::fs::create_dir_all(&volume).unwrap();
        let listen = format!("127.0.0.1:{port}");
        // The shell ends LocalStack when its stdin closes: when this process exits, even
        // by a panic or a kill.
        let mut child = Command::new("sh")
            .args([
                "-c",
                "\"$0\" -m localstack.runtime.main & pid=$!; cat > /dev/null; kill $pid; wait $pid",
            ])
            .arg(&python)
            .envs([
                ("GATEWAY_LISTEN", listen.as_str()),
                ("LOCALSTACK_HOST", listen.as_str()),
                ("SERVICES", "sqs"),
                ("EAGER_SERVICE_LOADING", "1"),
                ("SQS_ENDPOINT_STRATEGY", "path"),
                ("DISABLE_EVENTS", "1"),
                ("SKIP_SSL_CERT_DOWNLOAD", "1"),
                ("DNS_ADDRESS", "0"),
                ("LOCALSTACK_VOLUME_DIR", volume.to_str().unwrap()),
            ])
            .current_dir(&volume)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start LocalStack with {}: {e}", python.display()));
        let stderr = child.stderr.take().unwrap();
        let log: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        // Leaked on purpose: dropping it would close LocalStack's stdin, and stop it.
        std::mem::forget(child.stdin.take());
        let endpoint = format!("http://{listen}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if sqs_running(&listen) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "LocalStack exited at start ({status}):\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "LocalStack's sqs not running on {listen} within 60 s:\n{}",
                log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        set_env(&endpoint);
        LocalStack {
            endpoint,
            _child: child,
        }
    })
}

/// Whether `/_localstack/health` says sqs is running or available.
fn sqs_running(listen: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(listen) else {
        return false;
    };
    let request = format!("GET /_localstack/health HTTP/1.0\r\nHost: {listen}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"sqs\": \"running\"") || answer.contains("\"sqs\": \"available\"")
}
