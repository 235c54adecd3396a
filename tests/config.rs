//! Settings files: a good one gives the pipeline it describes; each bad field is named.

use std::time::Duration;

use longshore::service::{LogFormat, ServiceConfig};
use longshore::{Batcher, Processors, RateLimit, RetryPolicy};

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Source {
    queue: String,
    #[serde(default)]
    wait_time_seconds: u32,
    #[serde(default)]
    region: Option<String>,
}

impl longshore::source::SourceSettings for Source {}

const GOOD: &str = r#"
[pipeline]
name = "orders"
source_concurrency = 2
shutdown_deadline = "25s"
max_in_flight = 5000
processors = { concurrency = 8, max_demand = 100, min_demand = 50 }
retry = { max_attempts = 5, initial_backoff = "200ms", max_backoff = "1m" }
rate_limit = { messages = 1000, per = "1s", burst = 100 }

[[pipeline.batchers]]
name = "db"
batch_size = 500
batch_timeout = "250ms"
concurrency = 4
rate_limit = { messages = 50 }

[source]
queue = "orders"

[metrics]
addr = "127.0.0.1:9000"

[log]
format = "json"
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<ServiceConfig<Source>, String> {
    ServiceConfig::from_toml(text, env.iter().copied()).map_err(|error| error.to_string())
}

#[test]
fn a_good_file_gives_the_pipeline_it_describes() {
    let config = load(GOOD, &[]).unwrap();
    let pipeline = &config.pipeline;
    assert_eq!(pipeline.name, "orders");
    assert_eq!(pipeline.source_concurrency, 2);
    assert_eq!(pipeline.shutdown_deadline, Duration::from_secs(25));
    assert_eq!(pipeline.max_in_flight, Some(5000));
    assert_eq!(
        pipeline.processors,
        Processors::new(8).max_demand(100).min_demand(50)
    );
    assert_eq!(
        pipeline.retry,
        RetryPolicy::new(5)
            .initial_backoff(Duration::from_millis(200))
            .max_backoff(Duration::from_secs(60))
    );
    assert_eq!(pipeline.rate_limit, Some(RateLimit::per_second(1000).burst(100)));
    assert_eq!(
        pipeline.batchers,
        vec![Batcher::new("db")
            .batch_size(500)
            .batch_timeout(Duration::from_millis(250))
            .concurrency(4)
            .rate_limit(RateLimit::per_second(50))]
    );
    assert_eq!(config.source.queue, "orders");
    assert_eq!(config.metrics.addr, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(config.log.format, LogFormat::Json);
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let config = load("", &[]).unwrap();
    assert_eq!(config.pipeline, longshore::PipelineConfig::default());
    assert_eq!(config.metrics.addr, "0.0.0.0:9464".parse().unwrap());
    assert_eq!(config.log.format, LogFormat::Text);
}

#[test]
fn the_environment_overrides_the_file() {
    let config = load(
        GOOD,
        &[
            ("LONGSHORE_PIPELINE__PROCESSORS__CONCURRENCY", "16"),
            ("LONGSHORE_PIPELINE__SHUTDOWN_DEADLINE", "50s"),
            ("LONGSHORE_SOURCE__QUEUE", "orders-eu"),
            ("LONGSHORE_SOURCE__WAIT_TIME_SECONDS", "20"),
            ("LONGSHORE_LOG__FORMAT", "text"),
            ("UNRELATED", "x"),
            ("LONGSHORE_CONFIG", "/etc/longshore/config.toml"),
            ("LONGSHORE_HELM", "/usr/bin/helm"),
        ],
    )
    .unwrap();
    assert_eq!(config.pipeline.processors.concurrency(), 16);
    assert_eq!(config.pipeline.shutdown_deadline, Duration::from_secs(50));
    assert_eq!(
        config.source,
        Source {
            queue: "orders-eu".into(),
            wait_time_seconds: 20,
            region: None,
        }
    );
    assert_eq!(config.log.format, LogFormat::Text);
}

#[test]
fn each_bad_field_is_named_with_what_was_expected() {
    // (file, environment, the error's start)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "[pipeline]\nprocessors = { concurrency = \"many\" }",
            &[],
            "invalid pipeline.processors.concurrency: invalid type: string \"many\", expected usize",
        ),
        (
            "[pipeline]\nprocessors = { concurency = 4 }",
            &[],
            "invalid pipeline.processors.concurency: unknown field `concurency`, expected one of `concurrency`",
        ),
        (
            "[pipeline]\nshutdown_deadline = \"soon\"",
            &[],
            "invalid pipeline.shutdown_deadline: ",
        ),
        (
            "[[pipeline.batchers]]\nname = \"db\"\nbatch_size = 0",
            &[],
            "invalid pipeline.batchers.db.batch_size: must be at least 1, got 0",
        ),
        (
            "[[pipeline.batchers]]\nbatch_size = 10",
            &[],
            "invalid pipeline.batchers.name: must not be empty",
        ),
        (
            "[pipeline]\nprocessors = { max_demand = 10, min_demand = 10 }",
            &[],
            "invalid pipeline.processors.min_demand: must be below processors.max_demand (10), got 10",
        ),
        (
            "[pipeline]\nretry = { max_attempts = 0 }",
            &[],
            "invalid pipeline.retry.max_attempts",
        ),
        (
            "[pipeline]\nrate_limit = { per = \"1s\" }",
            &[],
            "invalid pipeline.rate_limit: missing field `messages`",
        ),
        ("[metrics]\naddr = \"localhost\"", &[], "invalid metrics.addr: "),
        (
            "[log]\nformat = \"xml\"",
            &[],
            "invalid log.format: unknown variant `xml`, expected `text` or `json`",
        ),
        ("[source]\nqueue = 5", &[], "invalid source.queue: invalid type: integer `5`, expected a string"),
        ("[pipelin]\nname = \"x\"", &[], "invalid pipelin: unknown field `pipelin`, expected one of `pipeline`"),
        ("[pipeline\nname = ", &[], "invalid config: "),
        (
            "",
            &[("LONGSHORE_PIPELINE__PROCESSORS__CONCURRENCY", "lots")],
            "invalid pipeline.processors.concurrency: invalid type: string \"lots\", expected usize",
        ),
        (
            "[pipeline]\nname = \"x\"",
            &[("LONGSHORE_PIPELINE__NAME__FIRST", "y")],
            "invalid pipeline.name.first: LONGSHORE_PIPELINE__NAME__FIRST goes inside `name`, which is not a table",
        ),
    ];
    for (text, env, expected) in cases {
        let error = load(text, env).expect_err(text);
        assert!(
            error.starts_with(expected),
            "{text:?}\n  gave {error}\n  not {expected}"
        );
    }
}

proptest::proptest! {
    /// Any file and any override is a setting or an error, never a panic.
    #[test]
    fn no_input_makes_the_loader_panic(
        text in "(\\[[a-z.]{0,12}\\]\n|[a-z_]{1,12} = (\"[^\"]{0,8}\"|[0-9]{1,3}|true|\\{[^}]{0,12}\\}|\\[[^]]{0,12}\\])\n|[^\n]{0,20}\n){0,8}",
        key in "[A-Z_]{0,24}",
        value in "[^\u{0}]{0,16}",
    ) {
        let _ = load(&text, &[]);
        let _ = load(GOOD, &[(&format!("LONGSHORE_{key}"), &value)]);
    }
}

#[test]
fn environment_values_stay_strings_unless_their_field_takes_another_type() {
    let config = load(
        GOOD,
        &[
            ("LONGSHORE_SOURCE__QUEUE", "12345"),
            ("LONGSHORE_SOURCE__WAIT_TIME_SECONDS", "7"),
            ("LONGSHORE_PIPELINE__NAME", "true"),
            ("LONGSHORE_LOG__FILTER", r#""debug""#),
            ("LONGSHORE_SOURCE__REGION", r#""pw" # not a comment"#),
        ],
    )
    .unwrap();
    assert_eq!(config.source.region.as_deref(), Some(r#""pw" # not a comment"#));
    assert_eq!(config.source.queue, "12345");
    assert_eq!(config.log.filter, "debug", "a quoted value is what it quotes");
    assert_eq!(config.source.wait_time_seconds, 7);
    assert_eq!(config.pipeline.name, "true");
    // A value that is neither the field's type nor TOML of it is named with the field.
    let error = load(GOOD, &[("LONGSHORE_SOURCE__WAIT_TIME_SECONDS", "[1]")]).unwrap_err();
    assert_eq!(
        error,
        "invalid source.wait_time_seconds: invalid type: sequence, expected u32"
    );
}

#[test]
fn a_json_null_is_an_unset_field() {
    let path = std::env::temp_dir().join(format!("longshore-config-{}.json", std::process::id()));
    let json = r#"{"pipeline": {"name": "orders", "rate_limit": null, "max_in_flight": null},
                   "source": {"queue": "q", "wait_time_seconds": null}, "log": null}"#;
    std::fs::write(&path, json).unwrap();
    let loaded = ServiceConfig::<Source>::load(&path);
    std::fs::remove_file(&path).unwrap();
    let config = loaded.unwrap();
    assert_eq!(
        (config.pipeline.name.as_str(), config.source.wait_time_seconds),
        ("orders", 0)
    );
    assert_eq!(config.log.format, LogFormat::Text);
}

/// A service's own `[app]` section.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct App {
    queue: String,
    #[serde(default)]
    retries: u32,
}

#[test]
fn an_app_field_set_from_the_environment_to_digits_stays_a_string() {
    let env = [("LONGSHORE_APP__QUEUE", "12345"), ("LONGSHORE_APP__RETRIES", "3")];
    let config = ServiceConfig::<Source, App>::from_toml("[app]\nqueue = \"orders\"", env).unwrap();
    assert_eq!((config.app.queue.as_str(), config.app.retries), ("12345", 3));
}

#[test]
fn the_control_section_is_off_by_default_and_on_needs_one_token_never_shown() {
    let config = load("", &[]).unwrap();
    assert!(config.control.surface().unwrap().is_none());

    assert_eq!(
        load("[control]\nenabled = true", &[]).unwrap_err(),
        "invalid control: enabled with no token: set control.token_file, or control.token (LONGSHORE_CONTROL__TOKEN)"
    );
    assert_eq!(
        load(
            "[control]\nenabled = true\ntoken_file = \"/t\"",
            &[("LONGSHORE_CONTROL__TOKEN", "0123456789abcdef0123")]
        )
        .unwrap_err(),
        "invalid control: control.token and control.token_file are both set: set one"
    );

    // The token from the environment (a Secret), as a string whatever its characters.
    let config = load(
        "[control]\nenabled = true",
        &[("LONGSHORE_CONTROL__TOKEN", "0123456789012345678")],
    )
    .unwrap();
    assert!(config.control.surface().unwrap().is_some());
    assert!(
        !format!("{config:?}").contains("0123456789012345678"),
        "the token is never printed"
    );

    let config = load(
        "[control]\nenabled = true",
        &[("LONGSHORE_CONTROL__TOKEN", "short")],
    )
    .unwrap();
    assert_eq!(
        config.control.surface().unwrap_err().to_string(),
        "invalid control.token: must be at least 16 characters, got 5"
    );
}
