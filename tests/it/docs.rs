//! Documentation contracts: every error code has a runbook entry; the
//! checked-in JSON Schema matches the Rust types.

use bootplan::error::ErrorCode;

#[test]
fn every_error_code_has_a_runbook_section() {
    let runbook =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runbook.md")).unwrap();
    let missing: Vec<&str> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|code| !runbook.contains(&format!("\n## {code}\n")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/runbook.md lacks sections for: {missing:?}"
    );
}

#[test]
fn checked_in_schema_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/bootplan.schema.json");
    let expected = bootplan::cli::schema_json() + "\n";
    if std::env::var_os("BOOTPLAN_UPDATE_SCHEMA").is_some() {
        std::fs::write(path, &expected).unwrap();
    }
    let actual = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        actual == expected,
        "schema/bootplan.schema.json is stale: run `BOOTPLAN_UPDATE_SCHEMA=1 cargo test --test it docs` and commit it"
    );
}
