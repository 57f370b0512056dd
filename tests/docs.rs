//! The docs list what the code has: every workspace crate in ARCHITECTURE.md's crate table and
//! in the README's project layout.

use std::path::PathBuf;

fn read(name: &str) -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name))
        .unwrap_or_else(|e| panic!("read {name}: {e}"))
}

/// `members = [...]` of the workspace.
fn members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.starts_with("members"))
        .expect("a members line");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The table rows of the section of `markdown` under `heading`.
fn table_under(markdown: &str, heading: &str) -> Vec<String> {
    markdown
        .lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with('|'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_crate_is_in_the_architecture_and_the_layout() {
    let crates = members();
    assert!(crates.len() >= 6, "{crates:?}");
    let architecture = table_under(&read("ARCHITECTURE.md"), "## Crates");
    let layout = table_under(&read("README.md"), "## Project layout");
    for c in &crates {
        assert!(
            architecture
                .iter()
                .any(|row| row.starts_with(&format!("| `{c}` "))),
            "ARCHITECTURE.md's crate table has no row for `{c}`"
        );
        assert!(
            layout.iter().any(|row| row.contains(&format!("`{c}/`"))),
            "README.md's project layout has no row for `{c}/`"
        );
    }
}
