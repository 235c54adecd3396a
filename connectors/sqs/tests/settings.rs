//! The README's list of `[source]` keys for SQS is exactly what `SqsConfig` reads.

#[path = "../../../test-support/settings_keys.rs"]
mod settings_keys;

#[test]
fn the_readme_lists_every_sqs_source_key_and_no_other() {
    assert_eq!(
        settings_keys::listed("SQS"),
        settings_keys::known::<longshore_sqs::SqsConfig>()
    );
}
