//! One writer of route and upstream records: each app's task writes its own, through its
//! [`crate::app::publish::Publisher`]; the supervisor's loop only sweeps away routes no app
//! claims, through `publish::sweep`. So in the supervisor's sources the store methods that write
//! routes and upstreams are called in `app/publish.rs` and nowhere else — which this checks, so
//! a second writer cannot come back unnoticed. (The model test's fake store checks the same at
//! run time: every route and upstream write it sees comes from a publishing effect.)

use std::path::{Path, PathBuf};

/// The store's writes of `routes:*` and `upstreams:*`.
const WRITES: [&str; 6] = [
    ".put_route(",
    ".delete_route(",
    ".set_upstreams(",
    ".set_upstreams_and_drains(",
    ".add_upstream(",
    ".remove_upstream(",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the sources").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_publisher_writes_routes_and_upstreams() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let publisher = src.join("app").join("publish.rs");
    let tests = src.join("app").join("tests");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in files {
        if file == publisher || file.starts_with(&tests) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if WRITES.iter().any(|w| code.contains(w)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, code));
            }
        }
    }
    assert!(
        found.is_empty(),
        "routes or upstreams written outside app/publish.rs:\n{}",
        found.join("\n")
    );
    let publish = std::fs::read_to_string(&publisher).expect("publish.rs");
    for w in [
        ".put_route(",
        ".delete_route(",
        ".set_upstreams_and_drains(",
    ] {
        assert!(publish.contains(w), "the publisher writes with {w}");
    }
}
