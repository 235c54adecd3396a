//! The check every connector runs on its series: those on longshore's registry under its
//! prefix are exactly those `docs/metrics.md` lists, with their types.

#![allow(dead_code, unreachable_pub)]

/// Asserts that the registry's families named `prefix...` are exactly the documented
/// ones, with the documented types; returns how many there are.
pub fn assert_exactly_documented(prefix: &str) -> usize {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|folder| folder.join("docs/metrics.md").exists())
        .expect("docs/metrics.md above the crate");
    let doc = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    let mut documented: Vec<(String, String)> = doc
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            name.starts_with(prefix)
                .then(|| (name.to_owned(), cells.next().unwrap_or_default().to_owned()))
        })
        .collect();
    documented.sort();
    let exposed: Vec<(String, String)> = longshore::metrics::registry()
        .gather()
        .iter()
        .filter(|family| family.name().starts_with(prefix))
        .map(|family| {
            (
                family.name().to_owned(),
                format!("{:?}", family.get_field_type()).to_lowercase(),
            )
        })
        .collect();
    assert_eq!(exposed, documented, "the {prefix} series against docs/metrics.md");
    documented.len()
}

/// The value of gauge `name` in the series whose label `label.0` is `label.1`, as
/// longshore's registry holds it now.
pub fn gauge(name: &str, label: (&str, &str)) -> Option<f64> {
    longshore::metrics::registry()
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().to_vec())
        .find(|metric| {
            metric
                .get_label()
                .iter()
                .any(|l| l.name() == label.0 && l.value() == label.1)
        })
        .map(|metric| metric.get_gauge().get_value())
}
