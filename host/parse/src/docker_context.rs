//! The Docker CLI's context store, as `docker context create` and `docker context use` write
//! it: `currentContext` in `config.json`, and a context's `meta.json`
//! (`contexts/meta/<sha256 of the name>/meta.json`) with its Docker endpoint.

use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    #[serde(default, rename = "currentContext")]
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default, rename = "Endpoints")]
    endpoints: Endpoints,
}

#[derive(Deserialize, Default)]
struct Endpoints {
    docker: Option<MetaEndpoint>,
}

#[derive(Deserialize)]
struct MetaEndpoint {
    #[serde(default, rename = "Host")]
    host: Option<String>,
    #[serde(default, rename = "SkipTLSVerify")]
    skip_tls_verify: bool,
}

/// A context's Docker endpoint, as its `meta.json` states it.
#[derive(Debug, PartialEq, Eq)]
pub struct ContextEndpoint {
    /// `unix:///…`, `tcp://host:port`…
    pub host: String,
    /// Connect over TLS without verifying the daemon's certificate.
    pub skip_tls_verify: bool,
}

/// Why a context's `meta.json` names no daemon.
#[derive(Debug, PartialEq, Eq)]
pub enum MetaError {
    /// Not the JSON the Docker CLI writes; the parser's words.
    Invalid(String),
    /// No `Endpoints.docker.Host` (a context for another orchestrator, or an empty one).
    NoDockerHost,
}

/// The context `config.json` makes current (`docker context use NAME`); none when the file
/// names none or names it empty. Text that is not JSON is an error with the parser's words.
pub fn current_context(config_json: &str) -> Result<Option<String>, String> {
    let config: Config = serde_json::from_str(config_json).map_err(|e| e.to_string())?;
    Ok(config.current_context.filter(|name| !name.is_empty()))
}

/// The Docker endpoint a context's `meta.json` names.
pub fn context_endpoint(meta_json: &str) -> Result<ContextEndpoint, MetaError> {
    let meta: Meta =
        serde_json::from_str(meta_json).map_err(|e| MetaError::Invalid(e.to_string()))?;
    let docker = meta.endpoints.docker.ok_or(MetaError::NoDockerHost)?;
    match docker.host.filter(|host| !host.is_empty()) {
        Some(host) => Ok(ContextEndpoint {
            host,
            skip_tls_verify: docker.skip_tls_verify,
        }),
        None => Err(MetaError::NoDockerHost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_context_is_read_from_config_json() {
        assert_eq!(
            current_context(r#"{"auths":{},"currentContext":"ci"}"#).unwrap(),
            Some("ci".to_string())
        );
        assert_eq!(current_context(r#"{"currentContext":""}"#).unwrap(), None);
        assert_eq!(current_context("{}").unwrap(), None);
        assert!(current_context("{").is_err());
    }

    #[test]
    fn a_meta_json_names_its_docker_endpoint() {
        // As `docker context create ci --docker host=unix:///run/ci.sock` writes it.
        let meta = r#"{"Name":"ci","Metadata":{},"Endpoints":{"docker":{"Host":"unix:///run/ci.sock","SkipTLSVerify":false}}}"#;
        assert_eq!(
            context_endpoint(meta).unwrap(),
            ContextEndpoint {
                host: "unix:///run/ci.sock".into(),
                skip_tls_verify: false
            }
        );
        let skip =
            r#"{"Endpoints":{"docker":{"Host":"tcp://10.0.0.1:2376","SkipTLSVerify":true}}}"#;
        assert!(context_endpoint(skip).unwrap().skip_tls_verify);
        assert_eq!(
            context_endpoint(r#"{"Endpoints":{}}"#),
            Err(MetaError::NoDockerHost)
        );
        assert_eq!(
            context_endpoint(r#"{"Endpoints":{"docker":{"Host":""}}}"#),
            Err(MetaError::NoDockerHost)
        );
        assert!(matches!(
            context_endpoint(r#"{"Endpoints": 1}"#),
            Err(MetaError::Invalid(_))
        ));
    }
}
