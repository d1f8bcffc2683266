//! One repository on one registry: opening it (the API check and authorization), blobs (found,
//! mounted, uploaded whole, or committed after a chunked upload, `upload`) and manifests.
//!
//! Call order: blobs, then the manifest. It is enforced here, in `put_manifest`, whatever guest
//! runs: a manifest is written only when every blob it names was confirmed in the registry
//! during this session, by a HEAD that found it, a mount, or an upload the registry committed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use sha2::{Digest as _, Sha256};

use super::auth::Auth;
use super::client::{is_loopback, send_retrying, speaks_https, Client, Peer, Renew};
use super::error::Error;
use super::retry::Policy;
use crate::confirmed::Confirmed;
use crate::credentials::Credential;
use crate::interrupt::Runtime;
use crate::limits::{check_manifest_size, read_capped, MANIFEST_LIMIT};
use crate::tls::Scheme;

/// What `get-manifest` accepts: every manifest and index type ocipush writes.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
/// How many times a manifest refused by the link race (`RegistryError::is_link_race`) is sent
/// again.
const LINK_RACE_RETRIES: u32 = 4;

/// How to speak to one repository: the registry's client, the repository, and as whom.
#[derive(Clone)]
pub struct Api {
    pub client: Client,
    /// The repository path.
    pub name: String,
    auth: Arc<Auth>,
}

/// A manifest as the registry stored it.
pub struct Stored {
    /// The digest it answered with (`Docker-Content-Digest`), else that of the bytes sent.
    pub digest: String,
    /// Its `OCI-Subject` answer: the registry keeps referrers of that manifest itself.
    pub subject: Option<String>,
}

/// One repository on one registry, and the blobs confirmed in it.
pub struct Repository {
    pub api: Api,
    pub confirmed: Confirmed,
    /// The first failure of its layer uploads, which ends the others.
    pub failed: super::upload::Failed,
}

impl Renew for Api {
    fn renews(&self) -> bool {
        self.auth.renews()
    }

    async fn renew(&self) -> Result<(), Error> {
        self.auth.renew(&self.client).await
    }
}

impl Api {
    /// `/v2/<name>/<path>` on the registry.
    pub fn url(&self, path: &str) -> Url {
        let mut url = self.client.base.clone();
        url.set_path(&format!("/v2/{}/{path}", self.name));
        url
    }

    /// A request carrying the credential only if `url` is on the registry's own origin.
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let same_origin = self.client.same_origin(&url);
        let request = self.client.http.request(method, url);
        match (self.auth.header(), same_origin) {
            (Some(value), true) => request.header(AUTHORIZATION, value),
            _ => request,
        }
    }

    /// Sends a request whose body can be sent again, retrying as `retry::decide` says; on a 401
    /// a new bearer token is fetched once and the request repeated.
    pub async fn send_retrying(
        &self,
        what: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, Error> {
        let peer = Peer::Registry(&self.client);
        send_retrying(&self.client.policy, &peer, what, build, self).await
    }

    /// The registry refused `what`.
    pub async fn refusal(&self, what: &str, response: Response) -> Error {
        self.client.refusal(what, response).await
    }

    /// `GET /v2/`: does the registry speak the API, and let us in?
    async fn ping(&self, what: &str) -> Result<Response, Error> {
        let mut url = self.client.base.clone();
        url.set_path("/v2/");
        self.send_retrying(what, || self.request(Method::GET, url.clone()))
            .await
    }

    /// Starts an upload session (`POST /v2/<name>/blobs/uploads/`) and returns its URL.
    pub async fn start_upload(&self) -> Result<Url, Error> {
        let what = format!("starting an upload to {}", self.name);
        let response = self
            .send_retrying(&what, || {
                self.request(Method::POST, self.url("blobs/uploads/"))
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.refusal(&what, response).await);
        }
        self.client.location(&response)
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
    ) -> Result<(), Error> {
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
            Some(stored) if stored != digest => Err(Error::Misstored {
                registry: self.client.registry.clone(),
                name: self.name.clone(),
                digest: digest.to_string(),
                stored: stored.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Cancels an upload session (`DELETE`) that will not be committed, so the registry can free
    /// it at once rather than purge it later. For a push that failed or stopped: see `cancel`.
    pub fn cancel_upload(&self, rt: &Runtime, session: Url) {
        rt.block_on_cleanup(self.cancel(session))
    }

    /// Best effort, and bounded by `CANCEL_LIMIT` whether or not a signal came: a push must not
    /// hang on it. A session the registry did not close is counted, for the stopped push's line.
    async fn cancel(&self, session: Url) {
        let registry = &self.client.registry;
        let cancelled = async {
            let response = self
                .request(Method::DELETE, session)
                .send()
                .await
                .map_err(|e| self.client.transport("cancelling an upload", &e))?;
            if response.status().is_success() {
                return Ok(());
            }
            let refusal = self.refusal("cancelling an upload", response).await;
            // Unknown: the session is gone already. Any other refusal leaves it open, e.g.
            // distribution's 404 BLOB_UPLOAD_INVALID for a `_state` that predates a PATCH the
            // registry got part of (a signal cut it short): it keeps that session until its purge.
            match refusal.refusal() {
                Some(error) if error.is_upload_unknown() => Ok(()),
                _ => Err(refusal),
            }
        };
        match tokio::time::timeout(crate::interrupt::CANCEL_LIMIT, cancelled).await {
            Ok(Ok(())) => tracing::debug!(%registry, "upload cancelled"),
            Ok(Err(error)) => {
                tracing::debug!(%registry, %error, "an upload was left open");
                crate::interrupt::upload_left_open();
            }
            Err(_) => {
                tracing::debug!(%registry, error = "no answer in time", "an upload was left open");
                crate::interrupt::upload_left_open();
            }
        }
    }

    /// Mounts `digest` from repository `source` of this registry (`POST
    /// blobs/uploads/?mount=&from=`). A bearer token gets `pull` on `source` first. Declined
    /// (false): 202 (an upload session was opened instead; it is cancelled), 401/403 (Harbor
    /// answers 401 for a source the user cannot read) and 404.
    pub async fn mount_blob(&self, digest: &str, source: &str) -> Result<bool, Error> {
        if self.auth.add_pull_scope(source) {
            self.auth.renew(&self.client).await?;
        }
        let mut url = self.url("blobs/uploads/");
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", source);
        let what = format!("mounting blob {digest} from {source} into {}", self.name);
        // Not `send_retrying`: a 401 here is an answer (the source may not be read), not an
        // expired token.
        let response = self
            .request(Method::POST, url)
            .send()
            .await
            .map_err(|e| self.client.transport(&what, &e))?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Ok(session) = self.client.location(&response) {
                    self.cancel(session).await;
                }
                Ok(false)
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                tracing::debug!(registry = %self.client.registry, source, status = %response.status(), "mount declined");
                Ok(false)
            }
            _ => Err(self.refusal(&what, response).await),
        }
    }

    /// The size of a blob if the registry has it (`HEAD /v2/<name>/blobs/<digest>`).
    pub async fn blob_size(&self, digest: &str) -> Result<Option<u64>, Error> {
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

    /// Writes a manifest under `reference`, returning the digest the registry stored it under
    /// and its `OCI-Subject` header, if it sent one. Distribution's blob link race
    /// (`RegistryError::is_link_race`) is waited out: a few tries, 200 ms apart and more each
    /// time.
    async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<Stored, Error> {
        let what = format!("manifest {}:{reference}", self.name);
        let request = || {
            self.request(Method::PUT, self.url(&format!("manifests/{reference}")))
                .header(CONTENT_TYPE, media_type)
                .body(body.to_vec())
        };
        let mut attempt = 0;
        let response = loop {
            let response = self.send_retrying(&what, request).await?;
            if response.status() == StatusCode::CREATED {
                break response;
            }
            let refused = self.refusal(&what, response).await;
            let race = refused.refusal().is_some_and(|e| e.is_link_race());
            attempt += 1;
            if attempt > LINK_RACE_RETRIES || !race {
                return Err(refused);
            }
            tracing::debug!(%refused, attempt, "manifest refused while a concurrent push writes the same blob links: trying again");
            tokio::time::sleep(Duration::from_millis(200) * attempt).await;
        };
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(Stored {
            digest: header("docker-content-digest")
                .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(body)))),
            subject: header("oci-subject"),
        })
    }

    /// A manifest or index read back (at most 4 MiB), or `None` when the registry has none.
    async fn get_manifest(&self, reference: &str) -> Result<Option<Vec<u8>>, Error> {
        let what = format!("reading manifest {}:{reference}", self.name);
        self.get_capped(&what, &format!("manifests/{reference}"), MANIFEST_TYPES)
            .await
    }

    /// `GET /v2/<name>/<path>`: its body (at most 4 MiB), or `None` on a 404.
    async fn get_capped(
        &self,
        what: &str,
        path: &str,
        accept: &str,
    ) -> Result<Option<Vec<u8>>, Error> {
        let what = what.to_string();
        let request = || {
            self.request(Method::GET, self.url(path))
                .header(ACCEPT, accept)
        };
        let mut response = self.send_retrying(&what, request).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.refusal(&what, response).await),
        }
        let body = read_capped(&mut response, MANIFEST_LIMIT)
            .await
            .map_err(|e| self.client.transport(&what, &e))?;
        if body.over {
            return Err(Error::TooLarge {
                registry: self.client.registry.clone(),
                what,
                limit: MANIFEST_LIMIT,
            });
        }
        Ok(Some(body.bytes))
    }
}

impl Repository {
    /// Opens `name` on `registry`: checks that it speaks the distribution API at `/v2/`, and
    /// answers its challenge with `credential` (Basic, or a bearer token fetched with it).
    pub async fn open(
        http: reqwest::Client,
        registry: String,
        name: String,
        credential: Option<Credential>,
        scheme: Scheme,
        policy: Policy,
    ) -> Result<Self, Error> {
        let mut api = Api {
            client: Client::new(http, registry, scheme, policy)?,
            name,
            auth: Arc::default(),
        };
        let what = "checking its API at /v2/";
        let mut response = match api.ping(what).await {
            // An insecure registry (registries.conf) is tried over HTTPS first, then over
            // plain HTTP when it answers in that, as containers/image does.
            Err(e) if scheme == Scheme::Insecure && e.is_plain_http_answer() => {
                tracing::debug!(registry = %api.client.registry, "the insecure registry answers plain HTTP");
                api.client.set_scheme("http");
                api.ping(what).await?
            }
            result => result?,
        };
        if api.client.base.scheme() == "http" && speaks_https(&mut response).await {
            // A registry spoken to over plain HTTP that answers that it wants HTTPS gets it,
            // and its certificate is checked like any other.
            tracing::debug!(registry = %api.client.registry, "the registry wants HTTPS");
            api.client.set_scheme("https");
            response = api.ping(what).await?;
        }
        if response.status() == StatusCode::UNAUTHORIZED {
            let exposed = credential.is_some()
                && api.client.base.scheme() == "http"
                && !is_loopback(&api.client.base);
            if let Some(auth) = Auth::answer(&api.client, &api.name, &response, credential).await? {
                if exposed {
                    // Not on loopback, where nothing crosses a network.
                    api.client.policy.notices.warning(&format!(
                        "sending credentials to registry {} over plain HTTP: anyone on the network path can read them",
                        api.client.registry
                    ));
                }
                api.auth = Arc::new(auth);
                response = api.ping(what).await?;
            }
        }
        if !response.status().is_success() {
            return Err(api.refusal(what, response).await);
        }
        Ok(Self {
            api,
            confirmed: Confirmed::default(),
            failed: Default::default(),
        })
    }

    /// The size of a blob the registry holds, which confirms it.
    pub async fn blob_size(&self, digest: &str) -> Result<Option<u64>, Error> {
        let found = self.api.blob_size(digest).await?;
        if found.is_some() {
            self.confirmed.insert(digest);
        }
        Ok(found)
    }

    /// Mounts a blob from `source`; a mounted blob is confirmed.
    pub async fn mount_blob(&self, digest: &str, source: &str) -> Result<bool, Error> {
        let mounted = self.api.mount_blob(digest, source).await?;
        if mounted {
            self.confirmed.insert(digest);
        }
        Ok(mounted)
    }

    /// Uploads a blob held whole (monolithic: one POST, one PUT) after checking it against
    /// `digest`; a committed blob is confirmed. A failed upload's session is cancelled.
    pub fn put_blob(&self, rt: &Runtime, digest: &str, data: Vec<u8>) -> Result<(), Error> {
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        if actual != digest {
            return Err(Error::Mismatch {
                digest: digest.to_string(),
                actual,
            });
        }
        let size = data.len() as u64;
        let location = rt.block_on(self.api.start_upload())??;
        let committed = rt.block_on(self.api.commit_upload(location.clone(), digest, size, data));
        if !matches!(committed, Ok(Ok(()))) {
            self.api.cancel_upload(rt, location);
        }
        committed??;
        self.confirmed.insert(digest);
        Ok(())
    }

    /// Writes a manifest under `reference` with `media_type`, and returns the digest the
    /// registry stored it under; refused, with nothing sent, unless every blob it names is
    /// confirmed.
    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String, Error> {
        Ok(self.put_checked(reference, media_type, body).await?.digest)
    }

    /// Writes an artifact manifest (one naming a `subject`) under its own digest, checked as
    /// `put_manifest` checks; the answer says whether the registry took it as a referrer.
    pub async fn put_referrer(&self, media_type: &str, body: &[u8]) -> Result<Stored, Error> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(body)));
        self.put_checked(&digest, media_type, body).await
    }

    async fn put_checked(
        &self,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<Stored, Error> {
        check_manifest_size(body.len()).map_err(Error::ManifestTooLarge)?;
        self.confirmed
            .check(body)
            .map_err(|problem| Error::Unconfirmed {
                registry: self.api.client.registry.clone(),
                name: self.api.name.clone(),
                reference: reference.to_string(),
                problem,
            })?;
        let stored = self.api.put_manifest(reference, media_type, body).await?;
        self.confirmed.insert(stored.digest.clone());
        Ok(stored)
    }

    /// A small blob (a signature payload, a provenance statement; at most 4 MiB), or `None`
    /// when the registry does not have it. The caller checks it against its digest.
    pub async fn get_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, Error> {
        let what = format!("reading blob {digest} of {}", self.api.name);
        self.api
            .get_capped(&what, &format!("blobs/{digest}"), "*/*")
            .await
    }

    /// The referrers API's index of the manifests that name `digest` as their subject, or
    /// `None` when the registry does not offer the API (distribution 2.8 answers 404).
    pub async fn get_referrers(&self, digest: &str) -> Result<Option<Vec<u8>>, Error> {
        let what = format!("reading the referrers of {}@{digest}", self.api.name);
        self.api
            .get_capped(
                &what,
                &format!("referrers/{digest}"),
                "application/vnd.oci.image.index.v1+json",
            )
            .await
    }

    /// A manifest read back; the registry holds it, so its digest is confirmed (an index
    /// may name it).
    pub async fn get_manifest(&self, reference: &str) -> Result<Option<Vec<u8>>, Error> {
        let body = self.api.get_manifest(reference).await?;
        if let Some(body) = &body {
            self.confirmed
                .insert(format!("sha256:{}", hex::encode(Sha256::digest(body))));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Notices;

    #[test]
    fn credentials_stay_on_the_registry_origin() {
        let policy = Policy {
            retries: 0,
            notices: Notices::none(),
        };
        let api = Api {
            client: Client::new(
                reqwest::Client::new(),
                "127.0.0.1:5000".into(),
                Scheme::Default,
                policy,
            )
            .unwrap(),
            name: "a".into(),
            auth: Arc::new(Auth::basic("Basic c2VjcmV0".into())),
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
}
