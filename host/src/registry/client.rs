//! Speaking HTTP to a registry and its token service: where a registry is (`base_url`), the one
//! retry loop every retried request goes through (`send_retrying`), and how answers and failures
//! become typed errors (`Peer`).

use std::net::IpAddr;
use std::time::Duration;

use reqwest::header::LOCATION;
use reqwest::{RequestBuilder, Response, StatusCode, Url};

use super::error::{Error, RegistryError, TokenFailure, Transport};
use super::retry::{self, Decision, Outcome, Policy};
use crate::limits::read_capped;
use crate::tls::Scheme;

/// The most bytes of an error response body worth reading for a message.
pub const ERROR_BODY_LIMIT: usize = 4096;
/// How long asking a registry whether it wants a client certificate may take.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// One registry as the client reaches it.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    /// The scheme and authority requests go to.
    pub base: Url,
    /// `host[:port]` as the user wrote it, for messages.
    pub registry: String,
    /// How failed requests are retried, and where retries are reported.
    pub policy: Policy,
    /// Whether it is spoken to over HTTPS or plain HTTP, and when that may change.
    pub scheme: Scheme,
}

impl Client {
    pub fn new(
        http: reqwest::Client,
        registry: String,
        scheme: Scheme,
        policy: Policy,
    ) -> Result<Self, Error> {
        Ok(Self {
            http,
            base: base_url(&registry, scheme)?,
            registry,
            policy,
            scheme,
        })
    }

    /// Speaks to the registry over `scheme` (`http` or `https`) from now on.
    pub fn set_scheme(&mut self, scheme: &str) {
        self.base
            .set_scheme(scheme)
            .expect("http and https are both special");
    }

    /// Whether `url` is on the registry's own scheme, host and port: only there does a
    /// credential go (uploads are often redirected to object storage, which must never see it).
    pub fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    /// The upload URL a response's `Location` names (often relative).
    pub fn location(&self, response: &Response) -> Result<Url, Error> {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "registry {} started an upload without a Location",
                    self.registry
                ))
            })?;
        self.base.join(location).map_err(|e| {
            Error::Protocol(format!(
                "registry {} sent an invalid upload Location: {e}",
                self.registry
            ))
        })
    }

    /// A request `what` failed below HTTP.
    pub fn transport(&self, what: &str, e: &reqwest::Error) -> Error {
        Error::Transport {
            registry: self.registry.clone(),
            what: what.to_string(),
            transport: Transport::of(e),
        }
    }

    /// The registry refused `what`: its status and error code, read from at most
    /// `ERROR_BODY_LIMIT` bytes of its body.
    pub async fn refusal(&self, what: &str, mut response: Response) -> Error {
        let status = response.status();
        let body = read_capped(&mut response, ERROR_BODY_LIMIT)
            .await
            .unwrap_or_default();
        Error::Refused {
            registry: self.registry.clone(),
            what: what.to_string(),
            error: RegistryError::new(status, &body.bytes),
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
}

/// Whom a request goes to, for how its failures read.
pub enum Peer<'a> {
    Registry(&'a Client),
    /// The token service at `realm`, for `registry`.
    TokenService {
        realm: &'a Url,
        registry: &'a str,
    },
}

impl Peer<'_> {
    fn transport(&self, what: &str, e: &reqwest::Error) -> Error {
        match self {
            Self::Registry(client) => client.transport(what, e),
            Self::TokenService { realm, registry } => Error::Token {
                realm: realm.to_string(),
                registry: registry.to_string(),
                failure: TokenFailure::Transport(Transport::of(e)),
            },
        }
    }

    /// An answer still worth retrying, as the reason for the retry.
    async fn refusal(&self, what: &str, response: Response) -> Error {
        match self {
            Self::Registry(client) => client.refusal(what, response).await,
            Self::TokenService { realm, registry } => Error::Token {
                realm: realm.to_string(),
                registry: registry.to_string(),
                failure: TokenFailure::Answered(response.status()),
            },
        }
    }

    /// A failed first attempt that the registry's wish for a client certificate explains.
    async fn client_certificate_wanted(&self, what: &str, e: &reqwest::Error) -> Option<Error> {
        match self {
            Self::Registry(client) if client.wants_client_certificate(e).await => {
                Some(Error::ClientCertificateWanted {
                    registry: client.registry.clone(),
                    what: what.to_string(),
                })
            }
            _ => None,
        }
    }
}

/// How a request answered with 401 gets a new bearer token.
pub(crate) trait Renew {
    /// Whether there is a token service to ask.
    fn renews(&self) -> bool;
    async fn renew(&self) -> Result<(), Error>;
}

/// For requests that cannot renew a token: the token fetch itself.
pub struct NoRenewal;

impl Renew for NoRenewal {
    fn renews(&self) -> bool {
        false
    }

    async fn renew(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// Sends a request whose body can be sent again, retrying what `retry::decide` says is worth
/// retrying, as `policy` says. When retries run out on an answer, that answer is returned for
/// the caller to report.
pub(crate) async fn send_retrying(
    policy: &Policy,
    peer: &Peer<'_>,
    what: &str,
    build: impl Fn() -> RequestBuilder,
    renew: &impl Renew,
) -> Result<Response, Error> {
    let mut renewed = false;
    let mut attempt = 0;
    loop {
        let sent = build().send().await;
        let outcome = match &sent {
            Err(e) => Outcome::Failed {
                retryable: Transport::of(e).retryable(),
            },
            Ok(response) => Outcome::Answered(response.status()),
        };
        let may_renew = !renewed && renew.renews();
        let (reason, retry_after) = match (
            retry::decide(outcome, attempt, policy.retries, may_renew),
            sent,
        ) {
            (Decision::Fail, Err(e)) => return Err(peer.transport(what, &e)),
            (Decision::Retry, Err(e)) => {
                if attempt == 0 {
                    if let Some(wanted) = peer.client_certificate_wanted(what, &e).await {
                        return Err(wanted);
                    }
                }
                (peer.transport(what, &e), None)
            }
            (Decision::Renew, Ok(_)) => {
                renewed = true;
                renew.renew().await?;
                continue;
            }
            (Decision::Retry, Ok(response)) => {
                let after = retry::retry_after(&response);
                (peer.refusal(what, response).await, after)
            }
            (_, Ok(response)) => return Ok(response),
            (_, Err(e)) => return Err(peer.transport(what, &e)),
        };
        attempt += 1;
        if !policy
            .wait(what, attempt, &reason.to_string(), retry_after)
            .await
        {
            return Err(Error::GaveUp {
                last: Box::new(reason),
                retries: policy.retries,
            });
        }
    }
}

/// Whether a plain HTTP answer says the server only speaks HTTPS (Go's servers answer 400
/// "Client sent an HTTP request to an HTTPS server", nginx "The plain HTTP request was sent to
/// HTTPS port").
pub async fn speaks_https(response: &mut Response) -> bool {
    if response.status() != StatusCode::BAD_REQUEST {
        return false;
    }
    let body = read_capped(response, ERROR_BODY_LIMIT)
        .await
        .unwrap_or_default();
    String::from_utf8_lossy(&body.bytes).contains("HTTPS")
}

/// The scheme and address for `host[:port]`: plain HTTP on loopback or with `Scheme::Plain`,
/// HTTPS everywhere else. (A registry spoken to over plain HTTP that answers that it wants HTTPS
/// gets it, and an insecure one that answers HTTPS in plain HTTP gets that: see
/// `Repository::open`.)
pub fn base_url(registry: &str, scheme: Scheme) -> Result<Url, Error> {
    let authority = if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    };
    let invalid =
        |detail: String| Error::Protocol(format!("invalid registry address {registry:?}{detail}"));
    let mut url =
        Url::parse(&format!("http://{authority}/")).map_err(|e| invalid(format!(": {e}")))?;
    let plain = match scheme {
        Scheme::Default => is_loopback(&url),
        Scheme::Plain => true,
        Scheme::Insecure => false,
    };
    if !plain {
        url.set_scheme("https")
            .map_err(|()| invalid(String::new()))?;
    }
    Ok(url)
}

/// Whether a URL's host is loopback (127.0.0.0/8, `localhost`, `::1`).
pub fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_plain_http_and_everything_else_https() {
        assert_eq!(
            base_url("127.0.0.1:5000", Scheme::Default)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:5000/"
        );
        assert_eq!(
            base_url("localhost", Scheme::Default).unwrap().as_str(),
            "http://localhost/"
        );
        assert_eq!(
            base_url("[::1]:5000", Scheme::Default).unwrap().as_str(),
            "http://[::1]:5000/"
        );
        assert_eq!(
            base_url("127.5.0.9", Scheme::Default).unwrap().scheme(),
            "http"
        );
        assert_eq!(
            base_url("gitea.cnoe.localtest.me:8443", Scheme::Default)
                .unwrap()
                .as_str(),
            "https://gitea.cnoe.localtest.me:8443/"
        );
        assert_eq!(
            base_url("docker.io", Scheme::Default).unwrap().as_str(),
            "https://registry-1.docker.io/"
        );
        assert_eq!(
            base_url("10.0.0.1:5000", Scheme::Default).unwrap().scheme(),
            "https"
        );
        assert_eq!(
            base_url("registry:5000", Scheme::Plain).unwrap().as_str(),
            "http://registry:5000/"
        );
        assert_eq!(
            base_url("127.0.0.1:5000", Scheme::Insecure)
                .unwrap()
                .scheme(),
            "https"
        );
    }
}
