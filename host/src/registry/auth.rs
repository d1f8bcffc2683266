//! How requests to a registry are authorized: HTTP Basic, or a bearer token from the registry's
//! token service (fetched with the credential, or anonymously), renewed when it expires or lacks
//! a scope. Shared by a repository and its uploads, so a token renewed by one request serves
//! every later one.

use std::sync::Mutex;

use ocipush_parse::parse_challenge;
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};

use super::client::{is_loopback, send_retrying, Client, NoRenewal, Peer};
use super::error::{root_cause, Error, TokenFailure};
use crate::credentials::Credential;
use crate::limits::read_capped;

/// The most bytes of a token service's answer read.
const TOKEN_BODY_LIMIT: usize = 1 << 20;

/// The credential requests carry.
#[derive(Default)]
pub struct Auth {
    /// The `Authorization` header value, if any.
    header: Mutex<Option<String>>,
    /// Where a new bearer token comes from, when the registry asked for one.
    token: Option<TokenService>,
}

/// A registry's token service, from its `WWW-Authenticate: Bearer` challenge.
pub struct TokenService {
    realm: Url,
    service: Option<String>,
    /// `repository:NAME:pull,push`, then `repository:SOURCE:pull` for each mount source.
    scopes: Mutex<Vec<String>>,
    /// Sent as HTTP Basic to the realm; anonymous without it.
    credential: Option<Credential>,
}

impl Auth {
    /// HTTP Basic with `header`, e.g. for tests.
    pub fn basic(header: String) -> Self {
        Self {
            header: Mutex::new(Some(header)),
            token: None,
        }
    }

    /// How to answer a 401 `challenge` for repository `name`: Basic with the credential, or a
    /// token from the service the challenge names. `None` when nothing can be done but go on
    /// without credentials (an unknown scheme).
    pub async fn answer(
        client: &Client,
        name: &str,
        challenge: &Response,
        credential: Option<Credential>,
    ) -> Result<Option<Self>, Error> {
        let challenge = challenge
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (scheme, params) = parse_challenge(challenge);
        match (credential, scheme.as_str()) {
            (Some(credential), "basic") => Ok(Some(Self::basic(credential.basic_authorization()))),
            (credential, "bearer") => {
                let service = TokenService::new(&client.registry, name, &params, credential)?;
                let header = service.fetch(client).await?;
                Ok(Some(Self {
                    header: Mutex::new(Some(header)),
                    token: Some(service),
                }))
            }
            (None, _) => Err(Error::NoCredentials {
                registry: client.registry.clone(),
            }),
            (Some(_), _) => Ok(None),
        }
    }

    /// The `Authorization` value to send, if any.
    pub fn header(&self) -> Option<String> {
        self.header.lock().unwrap().clone()
    }

    /// Whether a 401 can be answered by fetching a new bearer token.
    pub fn renews(&self) -> bool {
        self.token.is_some()
    }

    /// Fetches a new bearer token: the last one expired or lacks a scope.
    pub async fn renew(&self, client: &Client) -> Result<(), Error> {
        let Some(service) = &self.token else {
            return Ok(());
        };
        tracing::debug!(registry = %client.registry, "the registry refused the token: renewing it");
        let header = service.fetch(client).await?;
        *self.header.lock().unwrap() = Some(header);
        Ok(())
    }

    /// Adds `pull` on repository `source` to the token's scopes; true when it was not there (the
    /// token must then be renewed). False without a token service.
    pub fn add_pull_scope(&self, source: &str) -> bool {
        let Some(service) = &self.token else {
            return false;
        };
        let scope = format!("repository:{source}:pull");
        let mut scopes = service.scopes.lock().unwrap();
        let added = !scopes.contains(&scope);
        if added {
            scopes.push(scope);
        }
        added
    }
}

impl TokenService {
    /// The token service a `Bearer` challenge names. Its realm must be HTTPS, except on
    /// loopback: credentials are sent there.
    fn new(
        registry: &str,
        name: &str,
        params: &[(String, String)],
        credential: Option<Credential>,
    ) -> Result<Self, Error> {
        let param = |wanted: &str| {
            params
                .iter()
                .find(|(n, _)| n == wanted)
                .map(|(_, v)| v.clone())
        };
        let realm = param("realm").ok_or_else(|| {
            Error::Protocol(format!(
                "registry {registry} asks for a bearer token but names no realm to get it from"
            ))
        })?;
        let realm = Url::parse(&realm).map_err(|e| {
            Error::Protocol(format!(
                "registry {registry} names an invalid token realm {realm:?}: {e}"
            ))
        })?;
        let secure = realm.scheme() == "https" || (realm.scheme() == "http" && is_loopback(&realm));
        if !secure {
            return Err(Error::Protocol(format!(
                "registry {registry} names the token realm {realm}, which is not HTTPS: refusing to send credentials there"
            )));
        }
        Ok(Self {
            realm,
            service: param("service"),
            scopes: Mutex::new(vec![format!("repository:{name}:pull,push")]),
            credential,
        })
    }

    fn failure(&self, registry: &str, failure: TokenFailure) -> Error {
        Error::Token {
            realm: self.realm.to_string(),
            registry: registry.to_string(),
            failure,
        }
    }

    /// Fetches a bearer token and returns the `Authorization` value: with an identity token by
    /// OAuth2 (`POST realm` with `grant_type=refresh_token`), otherwise by `GET
    /// realm?service=…&scope=…` with Basic credentials when there are some (Gitea's token
    /// endpoint only answers GET), or anonymously. Retried as registry requests are.
    async fn fetch(&self, client: &Client) -> Result<String, Error> {
        let registry = client.registry.as_str();
        let identity = self.credential.as_ref().and_then(|c| c.identity_token());
        let scopes = self.scopes.lock().unwrap().clone();
        let scope = scopes.join(" ");
        let request = || match identity {
            Some(refresh_token) => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                    ("client_id", "ocipush"),
                    ("scope", scope.as_str()),
                ];
                if let Some(name) = &self.service {
                    form.push(("service", name));
                }
                client.http.post(self.realm.clone()).form(&form)
            }
            None => {
                let mut url = self.realm.clone();
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(name) = &self.service {
                        query.append_pair("service", name);
                    }
                    for scope in &scopes {
                        query.append_pair("scope", scope);
                    }
                }
                let request = client.http.get(url);
                match &self.credential {
                    Some(credential) => {
                        request.header(AUTHORIZATION, credential.basic_authorization())
                    }
                    None => request,
                }
            }
        };
        let what = format!("fetching a token for registry {registry}");
        let peer = Peer::TokenService {
            realm: &self.realm,
            registry,
        };
        let mut response = send_retrying(&client.policy, &peer, &what, request, &NoRenewal).await?;
        let status = response.status();
        if !status.is_success() {
            let hint = match (status, &self.credential) {
                (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Some(_))
                    if identity.is_some() =>
                {
                    " (unauthorized: the identity token was refused; log in again)"
                }
                (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Some(_)) => {
                    " (unauthorized: check the username and password)"
                }
                (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, None) => {
                    " (unauthorized: no credentials for this registry)"
                }
                _ => "",
            };
            return Err(self.failure(registry, TokenFailure::Refused { status, hint }));
        }
        let body = read_capped(&mut response, TOKEN_BODY_LIMIT)
            .await
            .map_err(|e| self.failure(registry, TokenFailure::Lost(root_cause(&e))))?;
        if body.over {
            return Err(self.failure(registry, TokenFailure::TooLarge));
        }
        let json: serde_json::Value = serde_json::from_slice(&body.bytes)
            .map_err(|e| self.failure(registry, TokenFailure::InvalidJson(e.to_string())))?;
        let token = ["token", "access_token"]
            .iter()
            .find_map(|key| {
                json.get(key)
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty())
            })
            .ok_or_else(|| self.failure(registry, TokenFailure::NoToken))?;
        Ok(format!("Bearer {token}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_realms_must_be_https_unless_on_loopback() {
        let realm = |r: &str| {
            TokenService::new("reg", "a/b", &[("realm".into(), r.into())], None)
                .map(|s| (s.realm.to_string(), s.scopes.lock().unwrap()[0].clone()))
        };
        assert_eq!(
            realm("https://auth.example/token").unwrap(),
            (
                "https://auth.example/token".into(),
                "repository:a/b:pull,push".into()
            )
        );
        assert!(realm("http://127.0.0.1:9000/token").is_ok());
        assert!(realm("http://localhost/token").is_ok());
        assert!(realm("http://[::1]:80/token").is_ok());
        let err = realm("http://auth.example/token").unwrap_err().to_string();
        assert!(err.contains("not HTTPS"), "{err}");
        assert!(TokenService::new("reg", "a", &[], None).is_err());
    }

    #[test]
    fn a_mount_source_is_added_to_the_scopes_once() {
        let auth = Auth {
            header: Mutex::default(),
            token: Some(
                TokenService::new(
                    "reg",
                    "a",
                    &[("realm".into(), "https://auth.example/t".into())],
                    None,
                )
                .unwrap(),
            ),
        };
        assert!(auth.add_pull_scope("lib/base"));
        assert!(!auth.add_pull_scope("lib/base"));
        let scopes = auth.token.as_ref().unwrap().scopes.lock().unwrap().clone();
        assert_eq!(
            scopes,
            ["repository:a:pull,push", "repository:lib/base:pull"]
        );
        assert!(
            !Auth::default().add_pull_scope("lib/base"),
            "no token service"
        );
    }
}
