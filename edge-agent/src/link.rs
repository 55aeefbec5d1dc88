//! What a failed request says about the device's link to the apiserver. Any answer proves the
//! link; only a request that got none marks it down, which makes the agent start its watch over
//! and report its status again once a renewal gets through.
//!
//! A refusal for load (429: the apiserver's priority and fairness shedding requests) is an
//! answer too. Counted as an outage, it made every agent of a fleet that started at once
//! relist and rewrite its status each time one of its renewals got through: more load, more
//! refusals, and 1,000 hollow devices never all reported Ready.
//!
//! So is the apiserver's own failure (500): it is what the apiserver answers when it cannot
//! reach an authorizer, the device authorizer among them while the controller restarts.
//! Counted as an outage, one controller's restart at 10,000 devices made agents relist and
//! rewrite statuses the apiserver already had, 1,572 of them in one run. A failed write is
//! retried anyway; only an outage can lose what was written. The answers a proxy gives in
//! front of a dead or overloaded apiserver (502, 503, 504, or a 500 page of its own) stay
//! outages.

use std::fmt;
use std::time::Duration;

use kube::core::Status;

/// A request that takes longer than this counts as unanswered: offline, a connection can hang.
/// It is longer than a live apiserver takes to answer, however busy: its priority and fairness
/// queues a request for at most a quarter of its own 60 s timeout before refusing it (a 429).
/// A request given up on is not work saved: the apiserver still performs it (a 504 in its
/// metrics). At 5 s, 1,000 hollow agents starting at once gave up on 50,000 writes that the
/// apiserver then made anyway, and each abandoned renewal marked the link down, which made the
/// agent write its status once more when it came back: the fleet took four minutes to report.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to the apiserver failed, as the link sees it; displays as the text to log.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// No answer: the connection, TLS, the deadline, or a gateway's or an unavailable
    /// apiserver's 5xx (which a proxy in front of a dead apiserver gives too).
    NoAnswer(String),
    /// The apiserver is shedding load: try again later, not sooner.
    Busy(String),
    /// The apiserver answered but did not do it: no (a 403 from an authorizer that does not
    /// know the device yet, ...), or it failed on its side ([`apiservers_own_failure`]).
    Refused(String),
}

/// Whether a 500 is the apiserver's own: a Status it wrote (reason `InternalError`), or the
/// text its request filters write when they fail, authorization among them when no
/// authorizer can be reached (`Internal Server Error: "<uri>": <error>`, k8s.io/apiserver's
/// `responsewriters.InternalError`). A proxy's error page is neither.
fn apiservers_own_failure(s: &Status) -> bool {
    s.code == 500
        && (s.reason == "InternalError" || s.message.starts_with("Internal Server Error: \""))
}

impl Failure {
    pub fn of(e: &kube::Error) -> Failure {
        let why = e.to_string();
        match e {
            kube::Error::Api(s) if s.code == 429 => Failure::Busy(why),
            kube::Error::Api(s) if (400..500).contains(&s.code) || apiservers_own_failure(s) => {
                Failure::Refused(why)
            }
            _ => Failure::NoAnswer(why),
        }
    }

    /// Whether the apiserver answered: the link is up.
    pub fn answered(&self) -> bool {
        !matches!(self, Failure::NoAnswer(_))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Failure::NoAnswer(why) | Failure::Busy(why) | Failure::Refused(why)) = self;
        f.write_str(why)
    }
}

/// A request to the apiserver under [`REQUEST_TIMEOUT`].
pub async fn within_deadline<T>(
    request: impl std::future::Future<Output = kube::Result<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(|e| Failure::of(&e)),
        Err(_) => Err(Failure::NoAnswer(format!(
            "no answer within {REQUEST_TIMEOUT:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("no", "Reason").with_code(code)))
    }

    #[test]
    fn only_a_request_without_an_answer_is_an_outage() {
        assert!(matches!(Failure::of(&status(429)), Failure::Busy(_)));
        assert!(matches!(Failure::of(&status(403)), Failure::Refused(_)));
        assert!(Failure::of(&status(404)).answered());
        for gateway in [502, 503, 504] {
            assert!(!Failure::of(&status(gateway)).answered(), "{gateway}");
        }
        assert!(!Failure::of(&kube::Error::LinesCodecMaxLineLengthExceeded).answered());
    }

    /// A 500 with `body`, as kube's client makes of one whose body is not a JSON Status.
    fn text_500(body: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            Status::failure(body, "Failed to parse error data").with_code(500),
        ))
    }

    #[test]
    fn an_apiserver_that_cannot_reach_its_authorizer_still_answers() {
        // What a device's request gets while the device authorizer's only replica restarts.
        let unauthorized = text_500(
            "Internal Server Error: \"/apis/coordination.k8s.io/v1/namespaces/edgefleet-system/leases/edgefleet-device-edge-1\": Post \"https://127.0.0.1:8443/authorize?timeout=3s\": dial tcp 127.0.0.1:8443: connect: connection refused",
        );
        assert!(matches!(Failure::of(&unauthorized), Failure::Refused(_)));
        let internal = Status::failure("etcd says no", "InternalError").with_code(500);
        assert!(Failure::of(&kube::Error::Api(Box::new(internal))).answered());
    }

    #[test]
    fn a_proxys_error_page_is_no_answer() {
        let page = text_500("<html><head><title>500 Internal Server Error</title></head></html>");
        assert!(!Failure::of(&page).answered());
        assert!(
            !Failure::of(&status(500)).answered(),
            "a 500 Status of another reason"
        );
    }
}
