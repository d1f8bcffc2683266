//! When and how long to wait before trying a registry request again: connection failures, 408,
//! 429 and 5xx are retried with exponential backoff and full jitter, honouring `Retry-After`,
//! a bounded number of times (`--retries`). Every retry is reported, so a slow push in CI says
//! why it is slow.

use std::time::{Duration, SystemTime};

use reqwest::header::RETRY_AFTER;
use reqwest::{Response, StatusCode};

use crate::progress::Notices;

/// The first backoff; each later one doubles, up to `MAX_DELAY`.
const BASE_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured: a registry asking for more is waited on this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// How many times a failed request is tried again, and where retries are reported.
#[derive(Clone)]
pub struct Policy {
    pub retries: u32,
    pub notices: Notices,
}

impl Policy {
    /// Waits before retry number `attempt` (1-based) of `what`, after `reason`, if retries are
    /// left: returns false when they are used up.
    pub async fn wait(
        &self,
        what: &str,
        attempt: u32,
        reason: &str,
        retry_after: Option<Duration>,
    ) -> bool {
        if attempt > self.retries {
            return false;
        }
        let delay = delay(attempt, retry_after);
        self.notices
            .retry(what, attempt, self.retries, delay, reason);
        tokio::time::sleep(delay).await;
        true
    }
}

/// What one attempt of a request came to.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// It failed below HTTP; `retryable` unless a certificate was at fault.
    Failed { retryable: bool },
    /// The server answered with this status.
    Answered(StatusCode),
}

/// What to do after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Fail now with the attempt's error.
    Fail,
    /// Wait, then try again, while retries are left (`Policy::wait`).
    Retry,
    /// Fetch a new bearer token, then try again: once per request.
    Renew,
    /// Hand the answer to the caller, who reports it if it is a refusal.
    Return,
}

/// The retry decision, the same for every request that may be retried (token fetches too):
/// lost connections, 408, 429 and 5xx are tried again; a certificate failure is not. An answer
/// that is still worth retrying when retries run out is returned for the caller to report. A 401
/// is answered with a new token once (`may_renew`: the registry hands out tokens, and none was
/// renewed for this request yet): a token can expire in the middle of a push.
pub fn decide(outcome: Outcome, attempt: u32, retries: u32, may_renew: bool) -> Decision {
    match outcome {
        Outcome::Failed { retryable: false } => Decision::Fail,
        Outcome::Failed { retryable: true } => Decision::Retry,
        Outcome::Answered(StatusCode::UNAUTHORIZED) if may_renew => Decision::Renew,
        Outcome::Answered(status) if retryable(status) && attempt < retries => Decision::Retry,
        Outcome::Answered(_) => Decision::Return,
    }
}

/// Whether a registry's answer is worth trying again: a timeout, rate limiting or a server error.
pub fn retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// The backoff before retry `attempt` (1-based): `Retry-After` when the registry gave one,
/// otherwise exponential with full jitter (a random wait between half and all of it), so many
/// clients failing together do not retry together.
pub fn delay(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(after) = retry_after {
        return after.min(MAX_RETRY_AFTER);
    }
    let full = BASE_DELAY
        .saturating_mul(1 << (attempt.saturating_sub(1)).min(16))
        .min(MAX_DELAY);
    full / 2 + full.mul_f64(fastrand::f64() / 2.0)
}

/// A response's `Retry-After`: delay-seconds or an HTTP date.
pub fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(value, SystemTime::now())
}

fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 1..=4 {
            let full = BASE_DELAY * (1 << (attempt - 1));
            for _ in 0..50 {
                let d = delay(attempt, None);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
        assert!(delay(40, None) <= MAX_DELAY);
        assert_eq!(
            delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(delay(1, Some(Duration::from_secs(9999))), MAX_RETRY_AFTER);
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn what_is_retried_renewed_returned_or_failed() {
        use Decision::*;
        let answered = |code| Outcome::Answered(StatusCode::from_u16(code).unwrap());
        let lost = Outcome::Failed { retryable: true };
        let certificate = Outcome::Failed { retryable: false };
        assert_eq!(decide(lost, 0, 5, true), Retry);
        assert_eq!(
            decide(lost, 5, 5, true),
            Retry,
            "Policy::wait says when to give up"
        );
        assert_eq!(decide(certificate, 0, 5, true), Fail);
        for code in [408, 429, 500, 503] {
            assert_eq!(decide(answered(code), 0, 5, false), Retry, "{code}");
            assert_eq!(decide(answered(code), 4, 5, false), Retry, "{code}");
            assert_eq!(
                decide(answered(code), 5, 5, false),
                Return,
                "{code}: out of retries, the answer is reported"
            );
        }
        assert_eq!(decide(answered(500), 0, 0, false), Return, "--retries 0");
        assert_eq!(decide(answered(401), 0, 5, true), Renew);
        assert_eq!(
            decide(answered(401), 0, 5, false),
            Return,
            "renewed once already"
        );
        for code in [200, 201, 202, 400, 403, 404, 413, 416] {
            assert_eq!(decide(answered(code), 0, 5, true), Return, "{code}");
        }
    }

    #[test]
    fn timeouts_rate_limits_and_server_errors_are_retried() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 403, 404, 405, 413, 416] {
            assert!(!retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }
}
