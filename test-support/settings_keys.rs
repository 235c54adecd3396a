//! The README lists the `[source]` keys of this connector; they are exactly the fields
//! its settings type reads.

#![allow(unreachable_pub)]

use longshore::service::ServiceConfig;

/// The keys the README lists after `- {name}: `, in order.
pub fn listed(name: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme
        .find(&format!("\n- {name}: "))
        .unwrap_or_else(|| panic!("the README lists no {name} keys"));
    let list = &readme[start + 1..];
    // The bullet ends at the next bullet or at the end of the list, whichever comes first.
    let end = [list[2..].find("\n- ").map(|end| end + 2), list.find("\n\n")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(list.len());
    backticked(&list[..end])
}

/// The fields a settings type knows, as its "unknown field" error lists them.
pub fn known<S>() -> Vec<String>
where
    S: serde::de::DeserializeOwned + Default + std::fmt::Debug + longshore::source::SourceSettings,
{
    let no_env: [(&str, &str); 0] = [];
    let error = ServiceConfig::<S>::from_toml("[source]\nnot_a_field = 1", no_env).unwrap_err();
    let message = error.to_string();
    let expected = message
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("no field list in {message}"))
        .1;
    backticked(expected)
}

fn backticked(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}
