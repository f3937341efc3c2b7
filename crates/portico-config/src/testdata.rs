//! Shared fixtures for the unit tests.

use std::path::PathBuf;

use crate::{ConfigErrors, NodeConfig, Role, parse_node, parse_node_as};

/// A valid origin file using every section and integration type.
pub(crate) const FULL: &str = include_str!("../testdata/origin.toml");

/// The directory holding the files `FULL` and docs/CONFIG.md refer to
/// (`testdata/`, checked in: tests only read it, so nothing is left behind).
pub(crate) fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

pub(crate) fn parse(text: &str) -> Result<NodeConfig, ConfigErrors> {
    parse_node(text, "t.toml", &fixture_dir())
}

pub(crate) fn parse_role(text: &str, role: Role) -> Result<NodeConfig, ConfigErrors> {
    parse_node_as(text, "t.toml", &fixture_dir(), Some(role))
}

/// The errors of an invalid text, as `line:col: message` lines (expected omitted).
pub(crate) fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
            .collect(),
    }
}

/// A minimal valid origin prefix for error tests.
pub(crate) const NODE: &str = "[node]\nid = \"o\"\nregion = \"r\"\n";

/// A complete `[backbone]` of an origin (4 lines), to which a test adds.
pub(crate) const BACKBONE: &str = "[backbone]\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\n";

/// `NODE` plus an API `a` (lines 4-6); `body` starts on line 7.
pub(crate) fn api(body: &str) -> String {
    format!("{NODE}[[apis]]\nname = \"a\"\nendpoint = \"edge\"\n{body}")
}

/// A route with a mock integration (3 lines, path on the first).
pub(crate) fn mock_route(method: &str, path: &str) -> String {
    format!(
        "[[apis.routes]]\nmethod = \"{method}\"\npath = \"{path}\"\n[apis.routes.integration]\ntype = \"mock\"\n"
    )
}
