//! Rendering the Helm chart with the real `helm`, and reading the settings file it
//! renders with the service's own loader. Included by each connector's chart test
//! (`#[path]`), not a crate.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use longshore::service::ServiceConfig;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

pub fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/longshore")
}

/// A tool installed by `scripts/test`; the test fails, saying how to get it, when missing.
pub fn tool(variable: &str, cached: &str) -> PathBuf {
    let path = std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap())
            .join(".cache")
            .join(cached)
    });
    assert!(
        path.is_file(),
        "{} not found ({variable}): scripts/test installs it",
        path.display()
    );
    path
}

pub fn helm(args: &[&str]) -> Output {
    Command::new(tool("LONGSHORE_HELM", "longshore-helm-v33/helm-layer/helm/helm"))
        .args(args)
        .output()
        .expect("helm runs")
}

/// `helm template` of the chart with `sets` (`--set` or `--set-json` pairs); the manifests.
pub fn render(sets: &[(&str, &str)]) -> (String, Vec<Value>) {
    let chart = chart();
    let mut args = vec!["template", "orders", chart.to_str().unwrap()];
    for (flag, value) in sets {
        args.extend([*flag, *value]);
    }
    let output = helm(&args);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect();
    (text, docs)
}

pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|doc| doc["kind"] == kind)
}

/// The settings file the chart renders, read by the service's loader.
pub fn rendered_config<S, A>(sets: &[(&str, &str)]) -> (ServiceConfig<S, A>, Vec<Value>)
where
    S: DeserializeOwned + Default + longshore::service::SourceSettings,
    A: DeserializeOwned + Default,
{
    let (_, docs) = render(sets);
    let configmap = of_kind(&docs, "ConfigMap").unwrap();
    let json = configmap["data"]["config.json"].as_str().unwrap();
    // A file of each call's own: the tests of one binary render at the same time.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("longshore-helm-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("config-{call}.json"));
    std::fs::write(&path, json).unwrap();
    let config = ServiceConfig::load(&path).unwrap_or_else(|error| panic!("{error}\n{json}"));
    (config, docs)
}
