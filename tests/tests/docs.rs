//! The repository explains itself: the module map in docs/ARCHITECTURE.md
//! names every source file, and names none that is gone; the code cites
//! only documents that are in the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn sources(dir: &Path, into: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.insert(path.strip_prefix(root()).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// Every `…/src/….rs` in backticks in the module map section.
fn mapped() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let map = text.split("## Module map").nth(1).expect("ARCHITECTURE.md has a module map");
    let map = map.split("\n## ").next().unwrap();
    map.split('`').filter(|s| s.contains("/src/") && s.ends_with(".rs")).map(str::to_string).collect()
}

#[test]
fn the_module_map_names_every_source_file_and_no_other() {
    let mut tree = BTreeSet::new();
    for krate in ["schemas", "runtime", "bridge", "worker", "tests"] {
        sources(&root().join(krate).join("src"), &mut tree);
    }
    let map = mapped();
    let missing: Vec<_> = tree.difference(&map).collect();
    let gone: Vec<_> = map.difference(&tree).collect();
    assert!(missing.is_empty(), "source files the module map in docs/ARCHITECTURE.md does not name: {missing:?}");
    assert!(gone.is_empty(), "files the module map names that are not in the tree: {gone:?}");
}

#[test]
fn the_code_cites_only_documents_in_the_repository() {
    let mut files = BTreeSet::new();
    for krate in ["schemas", "runtime", "bridge", "worker", "tests"] {
        sources(&root().join(krate), &mut files);
    }
    // This file names the documents it looks for.
    for file in files.iter().filter(|f| !f.starts_with("target/") && *f != "tests/tests/docs.rs") {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for gone in ["PROTOCOL.md", "DESIGN.md", "SEALING.md", "../shared"] {
            assert!(!text.contains(gone), "{file} cites {gone}, which is not in the repository");
        }
        for (n, _) in text.match_indices("docs/") {
            let name: String =
                text[n..].chars().take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c)).collect();
            let name = name.trim_end_matches('.');
            if name.ends_with(".md") {
                assert!(root().join(name).exists(), "{file} cites {name}, which does not exist");
            }
        }
    }
}
