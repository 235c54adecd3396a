//! Reading longshore's metrics registry in a test, as a scrape would show it. Included by
//! each connector's tests/common (`#[path]`).

#![allow(dead_code, unreachable_pub)]

/// The value of `name`'s sample whose labels include each of `labels`, in longshore's
/// registry.
pub fn metric(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let families = longshore::metrics::registry().gather();
    let text = prometheus::TextEncoder::new().encode_to_string(&families).ok()?;
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .find(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}
