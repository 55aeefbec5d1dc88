//! What a failed request says about the device's link to the apiserver. Any answer proves the
//! link; only a request that got none marks it down, which makes the agent start its watch over
//! and report its status again once a renewal gets through.
//!
//! A refusal for load (429: the apiserver's priority and fairness shedding requests) is an
//! answer too. Counted as an outage, it made every agent of a fleet that started at once
//! relist and rewrite its status each time one of its renewals got through: more load, more
//! refusals, and 1,000 hollow devices never all reported Ready.

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
    /// No answer: the connection, TLS, the deadline, or a server error (which a proxy in front
    /// of a dead apiserver gives too).
    NoAnswer(String),
    /// The apiserver is shedding load: try again later, not sooner.
    Busy(String),
    /// The apiserver answered no (a 403 until the controller has made the device's RBAC, ...).
    Refused(String),
}

impl Failure {
    pub fn of(e: &kube::Error) -> Failure {
        let why = e.to_string();
        match e {
            kube::Error::Api(s) if s.code == 429 => Failure::Busy(why),
            kube::Error::Api(s) if (400..500).contains(&s.code) => Failure::Refused(why),
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
        assert!(!Failure::of(&status(503)).answered());
        assert!(!Failure::of(&kube::Error::LinesCodecMaxLineLengthExceeded).answered());
    }
}
