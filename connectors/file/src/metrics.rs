//! The file's series on longshore's registry (`path` is the file's path as configured).

use std::sync::OnceLock;

use prometheus::{IntGauge, IntGaugeVec};

struct Families {
    lag_bytes: IntGaugeVec,
    checkpoint_line: IntGaugeVec,
}

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let gauge = |name: &str, help: &str| longshore::metrics::gauge_vec(name, help, &["path"]);
        Families {
            lag_bytes: gauge(
                "longshore_file_lag_bytes",
                "Bytes of the file after its checkpoint: not yet read, or read and not all acknowledged.",
            ),
            checkpoint_line: gauge(
                "longshore_file_checkpoint_line",
                "The line the checkpoint resumes at: every record before it is acknowledged.",
            ),
        }
    })
}

/// One file's gauges.
#[derive(Debug, Clone)]
pub(crate) struct FileMetrics {
    pub(crate) lag_bytes: IntGauge,
    pub(crate) checkpoint_line: IntGauge,
}

impl FileMetrics {
    pub(crate) fn new(path: &str) -> Self {
        let families = families();
        FileMetrics {
            lag_bytes: families.lag_bytes.with_label_values(&[path]),
            checkpoint_line: families.checkpoint_line.with_label_values(&[path]),
        }
    }
}
