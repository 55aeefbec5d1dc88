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
//! front of a dead or overloaded apiserver (502, 503, 504) stay outages.

use std::fmt;
use std::time::Duration;

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
    /// know the device yet, ...), or it failed on its side ([`INTERNAL_ERROR`]).
    Refused(String),
}

/// The code of the apiserver's own failure: an answer, not an outage.
const INTERNAL_ERROR: u16 = 500;

impl Failure {
    pub fn of(e: &kube::Error) -> Failure {
        let why = e.to_string();
        match e {
            kube::Error::Api(s) if s.code == 429 => Failure::Busy(why),
            kube::Error::Api(s) if (400..500).contains(&s.code) || s.code == INTERNAL_ERROR => {
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
    use kube::core::Status;

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

    #[test]
    fn an_apiserver_that_cannot_reach_its_authorizer_still_answers() {
        // What a device's request gets while the device authorizer's only replica restarts.
        assert!(matches!(Failure::of(&status(500)), Failure::Refused(_)));
    }
}
