//! JSON Schema files for the AMQP messages, generated from the Rust types.
//!
//! The files under `schemas/json/` are for people and for tools in other
//! languages; the Rust types are the source of truth. The test
//! `json_schema_files_are_current` fails when a file is out of date;
//! `SEALFARM_UPDATE_SCHEMAS=1 cargo test -p sealfarm-schemas` rewrites them.

use crate::messages::{ControlMessage, EventMessage, ResultMessage, TaskMessage};

/// `(file name, schema)` for every message kind.
pub fn all() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("task.schema.json", schemars::schema_for!(TaskMessage).to_value()),
        ("result.schema.json", schemars::schema_for!(ResultMessage).to_value()),
        ("event.schema.json", schemars::schema_for!(EventMessage).to_value()),
        ("control.schema.json", schemars::schema_for!(ControlMessage).to_value()),
    ]
}

/// The text written to a schema file.
pub fn render(schema: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema is always JSON");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn json_schema_files_are_current() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
        let update = std::env::var_os("SEALFARM_UPDATE_SCHEMAS").is_some();
        let mut stale = Vec::new();
        for (name, schema) in all() {
            let path = dir.join(name);
            let wanted = render(&schema);
            if update {
                std::fs::write(&path, &wanted).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(wanted.as_str()) {
                stale.push(path.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "out-of-date JSON Schema files {stale:?}; run SEALFARM_UPDATE_SCHEMAS=1 cargo test -p sealfarm-schemas"
        );
    }

    #[test]
    fn schemas_describe_the_stage_tag() {
        let (_, task) = &all()[0];
        let text = task.to_string();
        for stage in ["\"ap\"", "\"pc1\"", "\"c2\"", "\"ru\""] {
            assert!(text.contains(stage), "task schema lacks stage {stage}");
        }
    }
}
