//! The README's configuration tables against the binaries' own parsers: every variable the
//! README lists exists, every variable a binary reads is listed, and every default the README
//! states is the default the binary has. A default changed in code and not in the docs (or
//! the other way round) fails here.
use std::collections::BTreeMap;

use clap::CommandFactory as _;

/// One configuration table of the README: variable → stated default (`None` when the README
/// gives no literal default, e.g. "(required)").
fn readme_table(service: &str) -> BTreeMap<String, Option<String>> {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("\n## Configuration")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has a Configuration section");
    let table = section
        .split(&format!("**{service}**"))
        .nth(1)
        .expect("a table for the service")
        .trim_start()
        .lines()
        .take_while(|line| line.starts_with('|'))
        .skip(2);
    let mut rows = BTreeMap::new();
    for line in table {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names, defaults) = (cells[1], cells[2]);
        let names: Vec<&str> = names.split(" / ").map(|n| n.trim_matches('`')).collect();
        let defaults: Vec<Option<String>> = if defaults.starts_with('`') {
            defaults
                .split(" / ")
                .map(|d| Some(d.trim_matches('`').to_owned()))
                .collect()
        } else {
            vec![None; names.len()]
        };
        // "`A` / `B` | `1` / `2`" pairs them up; "`A_FILE` / `A` | (one required)" has none.
        assert_eq!(names.len(), defaults.len(), "README row: {line}");
        for (name, default) in names.into_iter().zip(defaults) {
            rows.insert(name.to_owned(), default);
        }
    }
    rows
}

/// Every environment variable a binary reads, with its default.
fn binary_settings(mut command: clap::Command) -> BTreeMap<String, Option<String>> {
    // Built as the parser builds it, with the implicit defaults (a flag's "false") in place.
    command.build();
    command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().into_owned();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            Some((env, (!defaults.is_empty()).then(|| defaults.join(","))))
        })
        .collect()
}

fn check(service: &str, command: clap::Command) {
    let documented = readme_table(service);
    let actual = binary_settings(command);
    let listed: Vec<&String> = documented.keys().collect();
    let read: Vec<&String> = actual.keys().collect();
    assert_eq!(
        listed, read,
        "{service}: the README lists what the binary reads"
    );
    for (name, default) in &documented {
        assert_eq!(
            default.as_ref(),
            actual[name].as_ref(),
            "{service}: the README's default of {name} is the binary's"
        );
    }
}

#[test]
fn the_readme_configuration_tables_are_the_binaries_settings() {
    check("session-svc", session_svc::config::Cli::command());
    check("gateway-svc", gateway_svc::config::Cli::command());
}
