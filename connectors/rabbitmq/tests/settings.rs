//! The README's list of `[source]` keys for RabbitMQ is exactly what `RabbitMqConfig`
//! reads.

#[path = "../../../test-support/settings_keys.rs"]
mod settings_keys;

#[test]
fn the_readme_lists_every_rabbitmq_source_key_and_no_other() {
    assert_eq!(
        settings_keys::listed("RabbitMQ"),
        settings_keys::known::<longshore_rabbitmq::RabbitMqConfig>()
    );
}
