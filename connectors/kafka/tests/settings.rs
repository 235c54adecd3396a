//! The README's list of `[source]` keys for Kafka is exactly what `KafkaConfig` reads.

#[path = "../../../test-support/settings_keys.rs"]
mod settings_keys;

#[test]
fn the_readme_lists_every_kafka_source_key_and_no_other() {
    assert_eq!(
        settings_keys::listed("Kafka"),
        settings_keys::known::<longshore_kafka::KafkaConfig>()
    );
}
