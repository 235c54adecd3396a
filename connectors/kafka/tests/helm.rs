//! The Helm chart, with the real `helm` and the Kubernetes schemas (kubernetes-validate):
//! lint, every optional part rendered and validated, and the ConfigMap it renders read by
//! the service's own loader (chart and binary agree).

#[path = "../../../test-support/helm.rs"]
mod helm;

use helm::{chart, helm, of_kind, render, rendered_config, tool};

/// A Kafka service's source section: the chart has none by default.
const KAFKA_SOURCE: &str = r#"config.source={"bootstrap_servers": "kafka:9092", "group_id": "orders-service", "topics": ["orders"]}"#;

/// The Kafka source section, then `sets`.
fn kafka<'a>(sets: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = vec![("--set-json", KAFKA_SOURCE)];
    all.extend_from_slice(sets);
    all
}

use std::process::Command;
use std::time::Duration;

use longshore::service::LogFormat;
use longshore::{Batcher, Processors, RetryPolicy};
use longshore_kafka::{KafkaConfig, Ordering};

/// Validates the built-in kinds against the Kubernetes schemas, strictly.
fn validate(text: &str, label: &str) {
    let dir = std::env::temp_dir().join(format!("longshore-helm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{label}.yaml"));
    std::fs::write(&file, text).unwrap();
    let output = Command::new(tool(
        "LONGSHORE_KUBERNETES_VALIDATE",
        "longshore-kubernetes-validate/bin/kubernetes-validate",
    ))
    .arg("--strict")
    .arg(&file)
    .output()
    .expect("kubernetes-validate runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{label}: {report}");
    for kind in ["serviceaccount", "configmap", "deployment"] {
        assert!(
            report.contains(&format!("passed for resource {kind}/")),
            "{label}: {kind} not validated: {report}"
        );
    }
}

#[test]
fn the_chart_lints_and_its_schema_rejects_bad_values_naming_them() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let output = helm(&["lint", "--strict", chart]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    for (set, field) in [
        (
            "config.pipeline.processors.concurrency=0",
            "/config/pipeline/processors/concurrency",
        ),
        ("config.pipeline.processors.concurency=4", "concurency"),
        ("keda.trigger=rabbitmq", "/keda/trigger"),
        ("metricsPort=99999", "/metricsPort"),
    ] {
        let output = helm(&["lint", chart, "--set", set]);
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "{set} accepted");
        assert!(report.contains(field), "{set}: {report}");
    }
}

#[test]
fn every_optional_part_renders_manifests_that_validate() {
    let variants: &[(&str, &[(&str, &str)])] = &[
        ("defaults", &[]),
        (
            "keda-kafka",
            &[
                ("--set", "keda.enabled=true"),
                ("--set", "serviceMonitor.enabled=true"),
                ("--set", "podDisruptionBudget.enabled=true"),
                (
                    "--set",
                    "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/r",
                ),
                (
                    "--set-json",
                    r#"extraEnv=[{"name":"LONGSHORE_LOG__FILTER","value":"debug"}]"#,
                ),
                (
                    "--set-json",
                    r#"envFrom=[{"secretRef":{"name":"kafka-credentials"}}]"#,
                ),
            ],
        ),
        (
            "keda-sqs",
            &[
                ("--set", "keda.enabled=true"),
                ("--set", "keda.trigger=sqs"),
                (
                    "--set",
                    "keda.sqs.queueURL=https://sqs.eu-west-1.amazonaws.com/1/orders",
                ),
                ("--set", "keda.sqs.awsRegion=eu-west-1"),
            ],
        ),
        (
            "keda-prometheus",
            &[
                ("--set", "keda.enabled=true"),
                ("--set", "keda.trigger=prometheus"),
            ],
        ),
        ("hpa", &[("--set", "autoscaling.enabled=true")]),
        (
            "control",
            &[
                ("--set", "control.enabled=true"),
                ("--set", "control.tokenSecret.name=orders-control"),
            ],
        ),
    ];
    for (label, sets) in variants {
        let (text, docs) = render(&kafka(sets));
        validate(&text, label);
        let deployment = of_kind(&docs, "Deployment").unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{label}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{label}");
        assert_eq!(security["capabilities"]["drop"][0], "ALL", "{label}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{label}");
        let scaled = of_kind(&docs, "ScaledObject");
        let autoscaled = label.starts_with("keda") || *label == "hpa";
        assert_eq!(
            deployment["spec"].get("replicas").is_none(),
            autoscaled,
            "{label}: replicas"
        );
        if let Some(scaled) = scaled {
            // KEDA's required fields (no schema for custom resources offline).
            assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
            assert_eq!(
                scaled["spec"]["scaleTargetRef"]["name"],
                deployment["metadata"]["name"]
            );
            let trigger = &scaled["spec"]["triggers"][0];
            let metadata = &trigger["metadata"];
            match trigger["type"].as_str().unwrap() {
                "kafka" => {
                    assert_eq!(metadata["bootstrapServers"], "kafka:9092");
                    assert_eq!(metadata["consumerGroup"], "orders-service");
                    assert_eq!(metadata["topic"], "orders");
                    assert!(metadata["lagThreshold"].is_string());
                }
                "aws-sqs-queue" => {
                    assert!(metadata["queueURL"].as_str().unwrap().starts_with("https://"));
                    assert_eq!(metadata["awsRegion"], "eu-west-1");
                    assert!(metadata["queueLength"].is_string());
                }
                "prometheus" => {
                    assert!(metadata["query"]
                        .as_str()
                        .unwrap()
                        .contains("longshore_kafka_consumergroup_lag"));
                    assert!(metadata["serverAddress"].is_string() && metadata["threshold"].is_string());
                }
                other => panic!("{label}: trigger {other}"),
            }
        }
        assert_eq!(
            scaled.is_some(),
            label.starts_with("keda"),
            "{label}: ScaledObject"
        );
        if let Some(monitor) = of_kind(&docs, "ServiceMonitor") {
            let service = of_kind(&docs, "Service").unwrap();
            assert_eq!(
                monitor["spec"]["selector"]["matchLabels"],
                service["spec"]["selector"]
            );
            assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
        }
    }
    // Two autoscalers at once is a mistake the chart refuses.
    let output = helm(&[
        "template",
        "orders",
        chart().to_str().unwrap(),
        "--set-json",
        KAFKA_SOURCE,
        "--set",
        "keda.enabled=true,autoscaling.enabled=true",
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("choose one"));
}

#[test]
fn the_configmap_gives_the_binary_the_pipeline_the_values_describe() {
    let (config, _) = rendered_config::<KafkaConfig, ()>(&kafka(&[]));
    assert_eq!(config.pipeline.name, "orders");
    assert_eq!(config.pipeline.processors, Processors::new(4));
    assert_eq!(config.pipeline.retry, RetryPolicy::new(3));
    assert_eq!(config.pipeline.shutdown_deadline, Duration::from_secs(25));
    assert_eq!(
        config.source,
        KafkaConfig::new("kafka:9092", "orders-service", ["orders"])
    );
    assert_eq!(config.metrics.addr, "0.0.0.0:9464".parse().unwrap());
    assert_eq!(config.log.format, LogFormat::Json);

    let (config, _) = rendered_config::<KafkaConfig, ()>(&kafka(&[
        ("--set", "metricsPort=9100"),
        ("--set", "config.pipeline.processors.max_demand=200"),
        ("--set", "config.pipeline.processors.min_demand=100"),
        (
            "--set-json",
            r#"config.pipeline.batchers=[{"name":"db","batch_size":1000,"batch_timeout":"250ms","concurrency":4}]"#,
        ),
        ("--set", "config.source.ordering=key"),
        ("--set", "config.source.commit_interval=2s"),
        (
            "--set-json",
            r#"config.source.properties={"security.protocol":"sasl_ssl"}"#,
        ),
    ]));
    assert_eq!(
        config.pipeline.processors,
        Processors::new(4).max_demand(200).min_demand(100)
    );
    assert_eq!(
        config.pipeline.batchers,
        vec![Batcher::new("db")
            .batch_size(1000)
            .batch_timeout(Duration::from_millis(250))
            .concurrency(4)]
    );
    assert_eq!(
        config.source,
        KafkaConfig::new("kafka:9092", "orders-service", ["orders"])
            .ordering(Ordering::Key)
            .commit_interval(Duration::from_secs(2))
            .property("security.protocol", "sasl_ssl")
    );
    assert_eq!(config.metrics.addr, "0.0.0.0:9100".parse().unwrap());
}

#[test]
fn the_control_surface_is_off_by_default_and_on_reads_its_token_from_the_mounted_secret() {
    let (config, docs) = rendered_config::<KafkaConfig, ()>(&kafka(&[]));
    assert!(!config.control.enabled);
    let pod = &of_kind(&docs, "Deployment").unwrap()["spec"]["template"]["spec"];
    assert!(pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .all(|v| v["name"] != "control-token"));

    let (config, docs) = rendered_config::<KafkaConfig, ()>(&kafka(&[
        ("--set", "control.enabled=true"),
        ("--set", "control.tokenSecret.name=orders-control"),
        ("--set", "control.tokenSecret.key=bearer"),
    ]));
    assert!(config.control.enabled);
    assert_eq!(config.control.token, None, "the token is never in the ConfigMap");
    let file = config.control.token_file.clone().unwrap();
    assert_eq!(
        file,
        std::path::Path::new("/var/run/secrets/longshore/control/bearer")
    );
    let pod = &of_kind(&docs, "Deployment").unwrap()["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "control-token")
        .expect("the Secret is mounted");
    assert_eq!(volume["secret"]["secretName"], "orders-control");
    assert_eq!(volume["secret"]["items"][0]["path"], "bearer");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "control-token")
        .unwrap();
    assert_eq!(
        mount["mountPath"].as_str().map(std::path::Path::new),
        file.parent()
    );
    assert_eq!(mount["readOnly"], true);

    // On with no Secret named: refused, saying what is missing.
    let output = helm(&[
        "template",
        "orders",
        chart().to_str().unwrap(),
        "--set-json",
        KAFKA_SOURCE,
        "--set",
        "control.enabled=true",
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("control.tokenSecret.name is required"));
}

#[test]
fn the_grace_period_exceeds_the_drain_deadline() {
    for deadline in ["25", "5", "300"] {
        let (config, docs) = rendered_config::<KafkaConfig, ()>(&kafka(&[(
            "--set",
            &format!("shutdownDeadlineSeconds={deadline}"),
        )]));
        let deployment = of_kind(&docs, "Deployment").unwrap();
        let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap();
        assert!(
            Duration::from_secs(grace) > config.pipeline.shutdown_deadline,
            "grace {grace} s, deadline {:?}",
            config.pipeline.shutdown_deadline
        );
        assert_eq!(
            config.pipeline.shutdown_deadline,
            Duration::from_secs(deadline.parse().unwrap())
        );
    }
}
