//! Keeps the user documentation of error codes complete.

#[test]
fn every_error_code_is_documented() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    for code in tessera_api::ErrorCode::ALL {
        let row = format!("| {} | `{}` |", code.status(), code.as_str());
        assert!(
            doc.contains(&row),
            "docs/errors.md lacks the row for {}",
            code.as_str()
        );
    }
}
