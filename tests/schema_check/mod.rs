//! The shipped JSON Schema (conf/spinforge.schema.json) as a validator, for tests that check
//! configs against it the way an editor would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn shipped_schema_path() -> PathBuf {
    repo().join("conf/spinforge.schema.json")
}

pub fn shipped_schema() -> serde_json::Value {
    let text = std::fs::read_to_string(shipped_schema_path()).expect("read the shipped schema");
    serde_json::from_str(&text).expect("the shipped schema is JSON")
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        jsonschema::validator_for(&shipped_schema()).expect("the shipped schema is a JSON Schema")
    })
}

/// YAML as the JSON an editor's schema check sees.
pub fn as_json(yaml: &str) -> serde_json::Value {
    if yaml.trim().is_empty() {
        return serde_json::json!({});
    }
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("not YAML ({e}):\n{yaml}"))
}

/// What the schema finds wrong with `yaml` (nothing: valid).
pub fn schema_errors(yaml: &str) -> Vec<String> {
    validator()
        .iter_errors(&as_json(yaml))
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Panics with the schema's complaints unless `file` is valid.
pub fn assert_valid(file: &Path) {
    let text = std::fs::read_to_string(file).expect("read the config");
    let errors = schema_errors(&text);
    assert!(
        errors.is_empty(),
        "{} does not match conf/spinforge.schema.json:\n{}",
        file.display(),
        errors.join("\n")
    );
}
