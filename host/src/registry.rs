//! An OCI distribution registry as a blob sink (the `registry` capability).
//!
//! Call order: blobs, then the manifest. It is enforced here, in `put_manifest`, whatever guest
//! runs: a manifest is written only when every blob it names was confirmed in the registry
//! during this session, by a HEAD that found it or by an upload the registry committed.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use ocipush_parse::{parse_challenge, referenced_digests};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use wasmtime::component::Resource;

use crate::credentials::Credential;
use crate::guest::ocipush::core::registry::{Compression, Host, HostRepository};
use crate::guest::HostState;
use crate::retry;
use crate::upload::LayerUpload;

/// The most bytes of an error response body worth reading for a message.
const ERROR_BODY_LIMIT: usize = 4096;
/// How long asking a registry whether it wants a client certificate may take.
const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
/// The most bytes of a token service's answer read.
const TOKEN_BODY_LIMIT: usize = 1 << 20;
/// The most bytes of a manifest read back: registries cap manifests at 4 MiB.
const MANIFEST_BODY_LIMIT: usize = 4 << 20;
/// What `get-manifest` accepts: every manifest and index type ocipush writes.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// How uploads behave: `--retries` and `--chunk-size`.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// How many times a failed request is tried again.
    pub retries: u32,
    /// The largest chunk of a layer sent in one request.
    pub chunk_size: u64,
}

/// Blobs the registry is known to hold, shared by a repository and its uploads.
pub type Confirmed = Arc<Mutex<HashSet<String>>>;

/// How to speak to one repository: the HTTP client, where, and as whom.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: Url,
    /// `host[:port]` as the user wrote it, for messages.
    pub registry: String,
    /// The repository path.
    pub name: String,
    auth: Arc<Auth>,
    /// How failed requests are retried, and where retries are reported.
    pub policy: retry::Policy,
}

/// How requests are authorized, shared by a repository and its uploads, so that a token
/// renewed by one request serves every later one.
#[derive(Default)]
struct Auth {
    /// The `Authorization` header value, if any.
    header: Mutex<Option<String>>,
    /// Where a new bearer token comes from, when the registry asked for one.
    token: Option<TokenService>,
}

/// A registry's token service, from its `WWW-Authenticate: Bearer` challenge.
struct TokenService {
    realm: Url,
    service: Option<String>,
    /// `repository:NAME:pull,push`, then `repository:SOURCE:pull` for each mount source.
    scopes: Mutex<Vec<String>>,
    /// Sent as HTTP Basic to the realm; anonymous without it.
    credential: Option<Credential>,
}

/// One repository on one registry.
pub struct Repository {
    pub api: Api,
    pub confirmed: Confirmed,
}

impl Api {
    /// `/v2/<name>/<path>` on the registry.
    pub fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("/v2/{}/{path}", self.name));
        url
    }

    /// A request carrying the credential only if `url` is on the registry's own host and port:
    /// uploads are often redirected to object storage, which must never see it.
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let same_origin = url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default();
        let request = self.client.request(method, url);
        match (self.auth.header.lock().unwrap().as_ref(), same_origin) {
            (Some(value), true) => request.header(AUTHORIZATION, value),
            _ => request,
        }
    }

    /// Whether a 401 can be answered by fetching a new bearer token.
    pub fn renews_tokens(&self) -> bool {
        self.auth.token.is_some()
    }

    /// Fetches a new bearer token: the last one expired or lacks a scope.
    pub async fn renew_token(&self) -> Result<(), String> {
        let Some(service) = &self.auth.token else {
            return Ok(());
        };
        tracing::debug!(registry = %self.registry, "the registry refused the token: renewing it");
        let header = fetch_token(&self.client, &self.registry, service, &self.policy).await?;
        *self.auth.header.lock().unwrap() = Some(header);
        Ok(())
    }

    /// Sends a request whose body can be sent again, retrying what is worth retrying (lost
    /// connections, 408, 429, 5xx) as `policy` says. A bearer token can expire in the middle of
    /// a push: on a 401 a new token is fetched once and the request repeated. When retries run
    /// out on an answer, that answer is returned for the caller to report.
    pub async fn send_retrying(
        &self,
        what: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, String> {
        let mut renewed = false;
        let mut attempt = 0;
        loop {
            let (reason, retry_after) = match build().send().await {
                Err(e) if crate::tls::is_certificate_error(&e) => {
                    return Err(self.transport_error(what, &e))
                }
                Err(e) => {
                    if attempt == 0 && self.wants_client_certificate(&e).await {
                        return Err(format!(
                            "registry {} refused the TLS handshake while {what}: it asks for a client certificate, and none is set up for it; {}",
                            self.registry,
                            self.client_certificate_hint()
                        ));
                    }
                    (self.transport_error(what, &e), None)
                }
                Ok(response)
                    if response.status() == StatusCode::UNAUTHORIZED
                        && !renewed
                        && self.renews_tokens() =>
                {
                    renewed = true;
                    self.renew_token().await?;
                    continue;
                }
                Ok(response) if retry::retryable(response.status()) => {
                    if attempt >= self.policy.retries {
                        return Ok(response);
                    }
                    let after = retry::retry_after(&response);
                    (self.refusal(what, response).await, after)
                }
                Ok(response) => return Ok(response),
            };
            attempt += 1;
            if !self.policy.wait(what, attempt, &reason, retry_after).await {
                return Err(retry::gave_up(&reason, self.policy.retries));
            }
        }
    }

    /// Whether a request failed because the registry wants a client certificate we do not have
    /// (see `tls::asks_for_client_certificate`): asked only over HTTPS without one set up, and
    /// not when the registry could not be reached at all.
    async fn wants_client_certificate(&self, e: &reqwest::Error) -> bool {
        if e.is_connect()
            || self.base.scheme() != "https"
            || crate::tls::has_client_certificate(&self.registry)
        {
            return false;
        }
        let (Some(host), Some(port)) = (self.base.host_str(), self.base.port_or_known_default())
        else {
            return false;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        crate::tls::asks_for_client_certificate(host, port, PROBE_LIMIT).await
    }

    /// `GET /v2/`: does the registry speak the API, and let us in?
    async fn ping(&self, what: &str) -> Result<Response, String> {
        let mut url = self.base.clone();
        url.set_path("/v2/");
        self.send_retrying(what, || self.request(Method::GET, url.clone()))
            .await
    }

    /// Sends a request; a transport failure becomes one line naming the registry.
    pub async fn send(&self, what: &str, request: RequestBuilder) -> Result<Response, String> {
        request
            .send()
            .await
            .map_err(|e| self.transport_error(what, &e))
    }

    pub fn transport_error(&self, what: &str, e: &reqwest::Error) -> String {
        if crate::tls::is_handshake_refusal(e) {
            return format!(
                "registry {} refused the TLS handshake while {what}: {}; if it requires a client certificate, {}",
                self.registry,
                root_cause(e),
                self.client_certificate_hint()
            );
        }
        if crate::tls::is_certificate_error(e) {
            return format!(
                "cannot verify the TLS certificate of registry {} while {what}: {}; trust its CA with --ca-file (or a certs.d directory), or skip verification with --insecure",
                self.registry,
                root_cause(e)
            );
        }
        let verb = if e.is_connect() {
            "cannot reach"
        } else {
            "lost the connection to"
        };
        format!(
            "{verb} registry {} while {what}: {}",
            self.registry,
            root_cause(e)
        )
    }

    /// Where a client certificate for this registry goes.
    fn client_certificate_hint(&self) -> String {
        format!(
            "put client.cert and client.key in its certs.d directory (/etc/docker/certs.d/{}/)",
            self.registry
        )
    }

    /// One line for a refusal: the status and the registry's own error code and message.
    pub async fn refusal(&self, what: &str, response: Response) -> String {
        let status = response.status();
        let body = crate::limits::read_capped(response, ERROR_BODY_LIMIT).await;
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|json| {
                let first = json.get("errors")?.get(0)?.clone();
                let code = first
                    .get("code")
                    .and_then(|c| c.as_str())
                    .unwrap_or("")
                    .to_string();
                let message = first
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
                    .to_string();
                Some(format!(": {code} {message}"))
            })
            .unwrap_or_default();
        let hint = if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            " (unauthorized)"
        } else {
            ""
        };
        one_line(&format!(
            "registry {} refused {what}: {status}{hint}{detail}",
            self.registry
        ))
    }

    /// The upload URL a response's `Location` names (often relative).
    pub fn location(&self, response: &Response) -> Result<Url, String> {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                format!(
                    "registry {} started an upload without a Location",
                    self.registry
                )
            })?;
        self.base.join(location).map_err(|e| {
            format!(
                "registry {} sent an invalid upload Location: {e}",
                self.registry
            )
        })
    }

    /// Starts an upload session (`POST /v2/<name>/blobs/uploads/`) and returns its URL.
    pub async fn start_upload(&self) -> Result<Url, String> {
        let what = format!("starting an upload to {}", self.name);
        let response = self
            .send_retrying(&what, || {
                self.request(Method::POST, self.url("blobs/uploads/"))
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.refusal(&what, response).await);
        }
        self.location(&response)
    }

    /// Completes an upload with `PUT <location>?digest=`, sending `body` as its last bytes;
    /// `size` is the blob's whole size. A commit whose answer was lost may have happened: when
    /// a retried commit finds the session gone, the blob itself is looked for.
    pub async fn commit_upload(
        &self,
        location: Url,
        digest: &str,
        size: u64,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let mut url = location;
        url.query_pairs_mut().append_pair("digest", digest);
        let what = format!("committing blob {digest} to {}", self.name);
        let attempts = AtomicU32::new(0);
        let request = || {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.request(Method::PUT, url.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, body.len())
                .body(body.clone())
        };
        let response = self.send_retrying(&what, request).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND
            && attempts.load(Ordering::Relaxed) > 1
            && self.blob_size(digest).await? == Some(size)
        {
            return Ok(());
        }
        if status != StatusCode::CREATED {
            return Err(self.refusal(&what, response).await);
        }
        match response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            Some(stored) if stored != digest => Err(format!(
                "registry {} stored blob {digest} in {} as {stored}",
                self.registry, self.name
            )),
            _ => Ok(()),
        }
    }

    /// Cancels an upload session (`DELETE`) that will not be committed, so the registry can free
    /// it at once rather than purge it later. For a push that failed or stopped: see `cancel`.
    pub fn cancel_upload(&self, rt: &crate::interrupt::Runtime, session: Url) {
        rt.block_on_cleanup(self.cancel(session))
    }

    /// Best effort, and bounded by `CANCEL_LIMIT` whether or not a signal came: a push must not
    /// hang on it. A session the registry did not close is counted, for the stopped push's line.
    async fn cancel(&self, session: Url) {
        let cancelled = async {
            let response = self
                .request(Method::DELETE, session)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let refusal = self.refusal("cancelling an upload", response).await;
            // Unknown: the session is gone already. Any other refusal leaves it open, e.g.
            // distribution's 404 BLOB_UPLOAD_INVALID for a `_state` that predates a PATCH the
            // registry got part of (a signal cut it short): it keeps that session until its purge.
            if status == StatusCode::NOT_FOUND && refusal.contains("BLOB_UPLOAD_UNKNOWN") {
                Ok(())
            } else {
                Err(refusal)
            }
        };
        let registry = &self.registry;
        let outcome = tokio::time::timeout(crate::interrupt::CANCEL_LIMIT, cancelled)
            .await
            .unwrap_or_else(|_| Err("no answer in time".to_string()));
        match outcome {
            Ok(()) => tracing::debug!(%registry, "upload cancelled"),
            Err(error) => {
                tracing::debug!(%registry, %error, "an upload was left open");
                crate::interrupt::upload_left_open();
            }
        }
    }

    /// Mounts `digest` from repository `source` of this registry (`POST
    /// blobs/uploads/?mount=&from=`). A bearer token gets `pull` on `source` first. Declined
    /// (false): 202 (an upload session was opened instead; it is cancelled), 401/403 (Harbor
    /// answers 401 for a source the user cannot read) and 404.
    pub async fn mount_blob(&self, digest: &str, source: &str) -> Result<bool, String> {
        if let Some(service) = &self.auth.token {
            let scope = format!("repository:{source}:pull");
            let added = {
                let mut scopes = service.scopes.lock().unwrap();
                let added = !scopes.contains(&scope);
                if added {
                    scopes.push(scope);
                }
                added
            };
            if added {
                self.renew_token().await?;
            }
        }
        let mut url = self.url("blobs/uploads/");
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", source);
        let what = format!("mounting blob {digest} from {source} into {}", self.name);
        // Not `send_retrying`: a 401 here is an answer (the source may not be read), not an
        // expired token.
        let response = self.send(&what, self.request(Method::POST, url)).await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Ok(session) = self.location(&response) {
                    self.cancel(session).await;
                }
                Ok(false)
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                tracing::debug!(registry = %self.registry, source, status = %response.status(), "mount declined");
                Ok(false)
            }
            _ => Err(self.refusal(&what, response).await),
        }
    }

    /// The size of a blob if the registry has it (`HEAD /v2/<name>/blobs/<digest>`).
    pub async fn blob_size(&self, digest: &str) -> Result<Option<u64>, String> {
        let what = format!("checking blob {digest} in {}", self.name);
        let response = self
            .send_retrying(&what, || {
                self.request(Method::HEAD, self.url(&format!("blobs/{digest}")))
            })
            .await?;
        match response.status() {
            // The header, not `content_length()`: a HEAD response's body is empty.
            StatusCode::OK => Ok(response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.refusal(&what, response).await),
        }
    }
}

/// Whether a plain HTTP answer says the server only speaks HTTPS (Go's servers answer 400
/// "Client sent an HTTP request to an HTTPS server", nginx "The plain HTTP request was sent to
/// HTTPS port").
async fn speaks_https(response: &mut Response) -> bool {
    if response.status() != StatusCode::BAD_REQUEST {
        return false;
    }
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > ERROR_BODY_LIMIT {
            break;
        }
    }
    String::from_utf8_lossy(&body).contains("HTTPS")
}

/// The scheme and address for `host[:port]`: plain HTTP on loopback, HTTPS everywhere else.
/// (A loopback registry that answers that it wants HTTPS gets it: see `open_repository`.)
fn base_url(registry: &str) -> Result<Url, String> {
    let authority = if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    };
    let mut url = Url::parse(&format!("http://{authority}/"))
        .map_err(|e| format!("invalid registry address {registry:?}: {e}"))?;
    if !is_loopback(&url) {
        url.set_scheme("https")
            .map_err(|()| format!("invalid registry address {registry:?}"))?;
    }
    Ok(url)
}

/// Whether a URL's host is loopback (127.0.0.0/8, `localhost`, `::1`).
fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The token service a `Bearer` challenge names. Its realm must be HTTPS, except on loopback:
/// credentials are sent there.
fn token_service(
    registry: &str,
    name: &str,
    params: &[(String, String)],
    credential: Option<Credential>,
) -> Result<TokenService, String> {
    let param = |wanted: &str| {
        params
            .iter()
            .find(|(n, _)| n == wanted)
            .map(|(_, v)| v.clone())
    };
    let realm = param("realm").ok_or_else(|| {
        format!("registry {registry} asks for a bearer token but names no realm to get it from")
    })?;
    let realm = Url::parse(&realm)
        .map_err(|e| format!("registry {registry} names an invalid token realm {realm:?}: {e}"))?;
    let secure = realm.scheme() == "https" || (realm.scheme() == "http" && is_loopback(&realm));
    if !secure {
        return Err(format!(
            "registry {registry} names the token realm {realm}, which is not HTTPS: refusing to send credentials there"
        ));
    }
    Ok(TokenService {
        realm,
        service: param("service"),
        scopes: Mutex::new(vec![format!("repository:{name}:pull,push")]),
        credential,
    })
}

/// Fetches a bearer token and returns the `Authorization` value: with an identity token by
/// OAuth2 (`POST realm` with `grant_type=refresh_token`), otherwise by `GET realm?service=…&scope=…`
/// with Basic credentials when there are some (Gitea's token endpoint only answers GET), or
/// anonymously. Lost connections and 408/429/5xx answers are retried like registry requests.
async fn fetch_token(
    client: &reqwest::Client,
    registry: &str,
    service: &TokenService,
    policy: &retry::Policy,
) -> Result<String, String> {
    let realm = &service.realm;
    let identity = service.credential.as_ref().and_then(|c| c.identity_token());
    let scopes = service.scopes.lock().unwrap().clone();
    let scope = scopes.join(" ");
    let request = || match identity {
        Some(refresh_token) => {
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", "ocipush"),
                ("scope", scope.as_str()),
            ];
            if let Some(name) = &service.service {
                form.push(("service", name));
            }
            client.post(realm.clone()).form(&form)
        }
        None => {
            let mut url = realm.clone();
            {
                let mut query = url.query_pairs_mut();
                if let Some(name) = &service.service {
                    query.append_pair("service", name);
                }
                for scope in &scopes {
                    query.append_pair("scope", scope);
                }
            }
            let request = client.get(url);
            match &service.credential {
                Some(credential) => request.header(AUTHORIZATION, credential.basic_authorization()),
                None => request,
            }
        }
    };
    let what = format!("fetching a token for registry {registry}");
    let mut attempt = 0;
    let mut response = loop {
        let (reason, retry_after) = match request().send().await {
            Err(e) if crate::tls::is_certificate_error(&e) => {
                return Err(format!(
                    "cannot verify the TLS certificate of token service {realm} for registry {registry}: {}; trust its CA with --ca-file, or skip verification with --insecure",
                    root_cause(&e)
                ))
            }
            Err(e) => (
                format!(
                    "cannot reach token service {realm} for registry {registry}: {}",
                    root_cause(&e)
                ),
                None,
            ),
            Ok(response) if retry::retryable(response.status()) && attempt < policy.retries => (
                format!("token service {realm} answered {}", response.status()),
                retry::retry_after(&response),
            ),
            Ok(response) => break response,
        };
        attempt += 1;
        if !policy.wait(&what, attempt, &reason, retry_after).await {
            return Err(retry::gave_up(&reason, policy.retries));
        }
    };
    let status = response.status();
    if !status.is_success() {
        let hint = match (status, &service.credential) {
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Some(_)) if identity.is_some() => {
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
        return Err(format!(
            "token service {realm} refused a token for registry {registry}: {status}{hint}"
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        format!(
            "lost the connection to token service {realm} for registry {registry}: {}",
            root_cause(&e)
        )
    })? {
        if body.len() + chunk.len() > TOKEN_BODY_LIMIT {
            return Err(format!(
                "token service {realm} for registry {registry} answered with more than 1 MiB"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        format!("token service {realm} for registry {registry} answered with invalid JSON: {e}")
    })?;
    let token = ["token", "access_token"]
        .iter()
        .find_map(|key| {
            json.get(key)
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty())
        })
        .ok_or_else(|| {
            format!("token service {realm} for registry {registry} answered without a token")
        })?;
    Ok(format!("Bearer {token}"))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    one_line(&cause.to_string())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How many times a manifest refused by `is_link_race` is sent again.
const LINK_RACE_RETRIES: u32 = 4;

/// Whether a manifest refusal is distribution's race with a concurrent push of the same blob to
/// the same repository: it writes a repository's blob link files in place, so a manifest PUT
/// that reads one mid-write gets DIGEST_INVALID (an empty digest) or MANIFEST_BLOB_UNKNOWN for
/// a blob this session confirmed. Seen with ten concurrent pushes (tests/hostile.rs); it
/// passes once the other write ends, so the PUT is tried again, a few times.
fn is_link_race(refusal: &str) -> bool {
    refusal.contains("400 Bad Request: DIGEST_INVALID")
        || refusal.contains(": MANIFEST_BLOB_UNKNOWN")
}

impl HostState {
    async fn open_repository(
        client: reqwest::Client,
        registry: String,
        name: String,
        credential: Option<Credential>,
        policy: retry::Policy,
    ) -> Result<Repository, String> {
        let mut api = Api {
            client,
            base: base_url(&registry)?,
            registry,
            name,
            auth: Arc::default(),
            policy,
        };
        let what = "checking its API at /v2/";
        let mut response = api.ping(what).await?;
        if api.base.scheme() == "http" && speaks_https(&mut response).await {
            // A loopback registry is spoken to over plain HTTP unless it answers that it
            // wants HTTPS: then its certificate is checked like any other.
            tracing::debug!(registry = %api.registry, "the registry wants HTTPS");
            api.base
                .set_scheme("https")
                .expect("http and https are both special");
            response = api.ping(what).await?;
        }
        if response.status() == StatusCode::UNAUTHORIZED {
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let (scheme, params) = parse_challenge(challenge);
            match (credential, scheme.as_str()) {
                (Some(credential), "basic") => {
                    api.auth = Arc::new(Auth {
                        header: Mutex::new(Some(credential.basic_authorization())),
                        token: None,
                    });
                    response = api.ping(what).await?;
                }
                (credential, "bearer") => {
                    let service = token_service(&api.registry, &api.name, &params, credential)?;
                    let header = fetch_token(&api.client, &api.registry, &service, &api.policy).await?;
                    api.auth = Arc::new(Auth {
                        header: Mutex::new(Some(header)),
                        token: Some(service),
                    });
                    response = api.ping(what).await?;
                }
                (None, _) => {
                    return Err(format!(
                        "registry {} refused access: 401 Unauthorized (unauthorized); no credentials for it (--username, Docker's config.json or podman's auth.json)",
                        api.registry
                    ))
                }
                (Some(_), _) => {}
            }
        }
        if !response.status().is_success() {
            return Err(api.refusal(what, response).await);
        }
        Ok(Repository {
            api,
            confirmed: Confirmed::default(),
        })
    }

    fn repository(
        &mut self,
        repository: &Resource<Repository>,
    ) -> wasmtime::Result<&mut Repository> {
        Ok(self.table.get_mut(repository)?)
    }
}

impl Host for HostState {
    fn open(
        &mut self,
        registry: String,
        name: String,
        credential: Option<Resource<Credential>>,
    ) -> wasmtime::Result<Result<Resource<Repository>, String>> {
        let credential = match credential {
            Some(handle) => {
                let credential = self.table.get(&handle)?.clone();
                // A credential is only ever used for the registry it was looked up for.
                (credential.registry == registry).then_some(credential)
            }
            None => None,
        };
        let client = match self.tls.client_for(&registry) {
            Ok(client) => client,
            Err(e) => return Ok(Err(e)),
        };
        let policy = retry::Policy {
            retries: self.transfer.retries,
            notices: self.progress.notices(),
        };
        let opened = self.rt.block_on(Self::open_repository(
            client, registry, name, credential, policy,
        ))?;
        Ok(match opened {
            Ok(repository) => Ok(self.table.push(repository)?),
            Err(e) => Err(e),
        })
    }
}

impl HostRepository for HostState {
    fn blob_size(
        &mut self,
        repository: Resource<Repository>,
        digest: String,
    ) -> wasmtime::Result<Result<Option<u64>, String>> {
        let rt = self.rt.clone();
        let repository = self.repository(&repository)?;
        let api = repository.api.clone();
        let found = rt.block_on(api.blob_size(&digest))?;
        if let Ok(Some(_)) = found {
            repository.confirmed.lock().unwrap().insert(digest);
        }
        Ok(found)
    }

    fn mount_blob(
        &mut self,
        repository: Resource<Repository>,
        digest: String,
        source: String,
    ) -> wasmtime::Result<Result<bool, String>> {
        let rt = self.rt.clone();
        let repository = self.repository(&repository)?;
        let api = repository.api.clone();
        let mounted = rt.block_on(api.mount_blob(&digest, &source))?;
        if let Ok(true) = mounted {
            repository.confirmed.lock().unwrap().insert(digest);
        }
        Ok(mounted)
    }

    fn put_blob(
        &mut self,
        repository: Resource<Repository>,
        digest: String,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let rt = self.rt.clone();
        let repository = self.repository(&repository)?;
        let api = repository.api.clone();
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        if actual != digest {
            return Ok(Err(format!(
                "refusing to upload blob {digest}: its bytes hash to {actual}"
            )));
        }
        let size = data.len() as u64;
        let location = match rt.block_on(api.start_upload())? {
            Ok(location) => location,
            Err(e) => return Ok(Err(e)),
        };
        let result = rt.block_on(api.commit_upload(location.clone(), &digest, size, data));
        if !matches!(result, Ok(Ok(()))) {
            api.cancel_upload(&rt, location);
        }
        let result = result?;
        if result.is_ok() {
            repository.confirmed.lock().unwrap().insert(digest);
        }
        Ok(result)
    }

    fn start_layer(
        &mut self,
        repository: Resource<Repository>,
        compression: Compression,
        level: u32,
    ) -> wasmtime::Result<Result<Resource<LayerUpload>, String>> {
        let rt = self.rt.clone();
        let repository = self.repository(&repository)?;
        let started = LayerUpload::start(
            &rt,
            repository.api.clone(),
            repository.confirmed.clone(),
            compression,
            level,
            self.transfer.chunk_size,
        );
        Ok(match started {
            Ok(upload) => Ok(self.table.push(upload)?),
            Err(e) => Err(e),
        })
    }

    fn put_manifest(
        &mut self,
        repository: Resource<Repository>,
        reference: String,
        media_type: String,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<String, String>> {
        let rt = self.rt.clone();
        let repository = self.repository(&repository)?;
        let api = repository.api.clone();
        if let Err(e) = crate::limits::check_manifest_size(body.len()) {
            return Ok(Err(e));
        }
        let referenced = match referenced_digests(&body) {
            Ok(digests) => digests,
            Err(e) => return Ok(Err(e)),
        };
        {
            let confirmed = repository.confirmed.lock().unwrap();
            if let Some(missing) = referenced.iter().find(|d| !confirmed.contains(*d)) {
                return Ok(Err(format!(
                    "refusing to write manifest {}:{reference}: it names blob {missing}, which is not confirmed in registry {}",
                    api.name, api.registry
                )));
            }
        }
        let computed = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        let what = format!("manifest {}:{reference}", api.name);
        let result = rt.block_on(async {
            let request = || {
                api.request(Method::PUT, api.url(&format!("manifests/{reference}")))
                    .header(CONTENT_TYPE, &media_type)
                    .body(body.clone())
            };
            let mut attempt = 0;
            let response = loop {
                let response = api.send_retrying(&what, request).await?;
                if response.status() == StatusCode::CREATED {
                    break response;
                }
                let refused = api.refusal(&what, response).await;
                attempt += 1;
                if attempt > LINK_RACE_RETRIES || !is_link_race(&refused) {
                    return Err(refused);
                }
                tracing::debug!(%refused, attempt, "manifest refused while a concurrent push writes the same blob links: trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200) * attempt).await;
            };
            let stored = response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok());
            Ok(stored.unwrap_or(&computed).to_string())
        })?;
        if let Ok(digest) = &result {
            repository.confirmed.lock().unwrap().insert(digest.clone());
        }
        Ok(result)
    }

    fn get_manifest(
        &mut self,
        repository: Resource<Repository>,
        reference: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        let rt = self.rt.clone();
        let api = self.repository(&repository)?.api.clone();
        let what = format!("reading manifest {}:{reference}", api.name);
        Ok(rt.block_on(async {
            let request = || {
                api.request(Method::GET, api.url(&format!("manifests/{reference}")))
                    .header(ACCEPT, MANIFEST_TYPES)
            };
            let mut response = api.send_retrying(&what, request).await?;
            match response.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => return Ok(None),
                _ => return Err(api.refusal(&what, response).await),
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| api.transport_error(&what, &e))?
            {
                if body.len() + chunk.len() > MANIFEST_BODY_LIMIT {
                    return Err(format!(
                        "registry {} answered {what} with more than {} MiB",
                        api.registry,
                        MANIFEST_BODY_LIMIT >> 20
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Some(body))
        })?)
    }

    fn drop(&mut self, repository: Resource<Repository>) -> wasmtime::Result<()> {
        self.table.delete(repository)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_blob_link_race_is_tried_again() {
        assert!(is_link_race("registry r refused manifest a:1: 400 Bad Request: DIGEST_INVALID provided digest did not match uploaded content"));
        assert!(is_link_race("registry r refused manifest a:1: 400 Bad Request: MANIFEST_BLOB_UNKNOWN blob unknown to registry"));
        assert!(!is_link_race(
            "registry r refused manifest a:1: 400 Bad Request: MANIFEST_INVALID manifest invalid"
        ));
        assert!(!is_link_race(
            "registry r refused manifest a:1: 403 Forbidden (unauthorized): DENIED"
        ));
    }

    #[test]
    fn loopback_is_plain_http_and_everything_else_https() {
        assert_eq!(
            base_url("127.0.0.1:5000").unwrap().as_str(),
            "http://127.0.0.1:5000/"
        );
        assert_eq!(base_url("localhost").unwrap().as_str(), "http://localhost/");
        assert_eq!(
            base_url("[::1]:5000").unwrap().as_str(),
            "http://[::1]:5000/"
        );
        assert_eq!(base_url("127.5.0.9").unwrap().scheme(), "http");
        assert_eq!(
            base_url("gitea.cnoe.localtest.me:8443").unwrap().as_str(),
            "https://gitea.cnoe.localtest.me:8443/"
        );
        assert_eq!(
            base_url("docker.io").unwrap().as_str(),
            "https://registry-1.docker.io/"
        );
        assert_eq!(base_url("10.0.0.1:5000").unwrap().scheme(), "https");
    }

    #[test]
    fn credentials_stay_on_the_registry_origin() {
        let api = Api {
            client: reqwest::Client::new(),
            base: base_url("127.0.0.1:5000").unwrap(),
            registry: "127.0.0.1:5000".into(),
            name: "a".into(),
            auth: Arc::new(Auth {
                header: Mutex::new(Some("Basic c2VjcmV0".into())),
                token: None,
            }),
            policy: retry::Policy {
                retries: 0,
                notices: crate::progress::Notices::none(),
            },
        };
        let has_auth = |url: &str| {
            let request = api
                .request(Method::PUT, Url::parse(url).unwrap())
                .build()
                .unwrap();
            request.headers().contains_key(AUTHORIZATION)
        };
        assert!(has_auth("http://127.0.0.1:5000/v2/a/blobs/uploads/x"));
        assert!(!has_auth("http://127.0.0.2:5000/v2/a/blobs/uploads/x"));
        assert!(!has_auth("http://127.0.0.1:9000/bucket/x"));
        assert!(!has_auth("https://127.0.0.1:5000/v2/a/blobs/uploads/x"));
    }

    #[test]
    fn token_realms_must_be_https_unless_on_loopback() {
        let realm = |r: &str| {
            token_service("reg", "a/b", &[("realm".into(), r.into())], None)
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
        let err = realm("http://auth.example/token").unwrap_err();
        assert!(err.contains("not HTTPS"), "{err}");
        assert!(token_service("reg", "a", &[], None).is_err());
    }
}
