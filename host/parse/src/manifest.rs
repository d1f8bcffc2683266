//! What a manifest names: the host checks every blob is in the registry before writing it.

/// The digests a manifest or index names: its config, layers and sub-manifests.
pub fn referenced_digests(body: &[u8]) -> Result<Vec<String>, String> {
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("refusing to write a manifest that is not JSON: {e}"))?;
    let digest =
        |d: &serde_json::Value| d.get("digest").and_then(|d| d.as_str()).map(str::to_string);
    let mut digests: Vec<String> = json.get("config").and_then(digest).into_iter().collect();
    for list in ["layers", "manifests"] {
        if let Some(items) = json.get(list).and_then(|l| l.as_array()) {
            for item in items {
                digests.push(digest(item).ok_or_else(|| {
                    format!("refusing to write a manifest whose {list} entry has no digest")
                })?);
            }
        }
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_references_are_config_layers_and_submanifests() {
        let body = br#"{"config":{"digest":"sha256:c"},"layers":[{"digest":"sha256:l1"},{"digest":"sha256:l2"}]}"#;
        assert_eq!(
            referenced_digests(body).unwrap(),
            vec!["sha256:c", "sha256:l1", "sha256:l2"]
        );
        let index = br#"{"manifests":[{"digest":"sha256:m"}]}"#;
        assert_eq!(referenced_digests(index).unwrap(), vec!["sha256:m"]);
        assert!(referenced_digests(br#"{"layers":[{}]}"#).is_err());
        assert!(referenced_digests(b"not json").is_err());
    }
}
