//! The Helm chart with an SQS service's values, rendered by the real `helm`: the settings
//! file it renders is read by the service's own loader into the SQS source's settings,
//! and KEDA's `aws-sqs-queue` trigger names the same queue and region.

#[path = "../../../test-support/helm.rs"]
mod helm;

use std::time::Duration;

use helm::{of_kind, rendered_config};
use longshore_sqs::{FinalFailure, SqsConfig};

#[test]
fn the_chart_renders_the_sqs_source_and_its_queue_length_trigger() {
    let queue = "https://sqs.eu-west-1.amazonaws.com/123456789012/orders";
    let source = format!(
        r#"{{"queue": "{queue}", "region": "eu-west-1", "receive_concurrency": 20,
            "visibility_timeout": "60s", "on_final_failure": "delete"}}"#
    );
    let (config, docs) = rendered_config::<SqsConfig, ()>(&[
        ("--set-json", &format!("config.source={source}")),
        ("--set", "keda.enabled=true"),
        ("--set", "keda.trigger=sqs"),
    ]);
    let expected = SqsConfig::new(queue)
        .region("eu-west-1")
        .receive_concurrency(20)
        .visibility_timeout(Duration::from_secs(60))
        .on_final_failure(FinalFailure::Delete);
    assert_eq!(config.source, expected);
    assert!(config.source.validate().is_ok());

    let trigger = &of_kind(&docs, "ScaledObject").expect("a ScaledObject")["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "aws-sqs-queue");
    assert_eq!(
        trigger["metadata"]["queueURL"], queue,
        "defaults to the source's queue"
    );
    assert_eq!(
        trigger["metadata"]["awsRegion"], "eu-west-1",
        "defaults to the source's region"
    );
}

/// A service's own `[app]` section, as the sqs-worker example reads one.
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct App {
    endpoint: String,
    /// A string that looks like a number: it stays a string.
    account: String,
    retries: u32,
}

#[test]
fn the_chart_passes_the_app_section_through_to_the_services_loader() {
    let (config, _) = rendered_config::<SqsConfig, App>(&[
        ("--set-json", r#"config.source={"queue": "orders"}"#),
        (
            "--set-json",
            r#"config.app={"endpoint": "http://billing:8080/charge", "account": "12345", "retries": 3}"#,
        ),
    ]);
    let expected = App {
        endpoint: "http://billing:8080/charge".to_owned(),
        account: "12345".to_owned(),
        retries: 3,
    };
    assert_eq!(config.app, expected);
}
