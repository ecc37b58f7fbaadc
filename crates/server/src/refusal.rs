//! What both listeners tell a client whose request the engine refused: one
//! place maps a [`keel::Error`] to its kind of answer (HTTP status, RESP
//! error) and its text, so a stopped log reads the same over both.

/// The kind of answer a refused request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request was malformed (an empty key or value): HTTP 400.
    BadRequest,
    /// A key, value or batch over a limit: HTTP 413.
    TooLarge,
    /// The log stopped after a failed write or fsync (fail-stop): writes
    /// are refused until a restart, reads go on. HTTP 503.
    Stopped,
    /// Anything else: HTTP 500.
    Internal,
}

/// How `e` is answered.
pub fn classify(e: &keel::Error) -> Refusal {
    if e.is_stopped() {
        Refusal::Stopped
    } else if e.is_too_large() {
        Refusal::TooLarge
    } else if e.is_invalid_input() {
        Refusal::BadRequest
    } else {
        Refusal::Internal
    }
}

/// The text sent to the client for `e`. It names what failed and what to
/// do, never a file-system path: those go to the server's log.
pub fn message(e: &keel::Error) -> String {
    match classify(e) {
        Refusal::Stopped => {
            let why = match e {
                keel::Error::Wal(keel_wal::WalError::Stopped { cause, .. }) => {
                    format!("{} failed: {}", cause.op, cause.error)
                }
                keel::Error::Poisoned { what } => {
                    format!("a thread panicked holding the {what} lock")
                }
                _ => "a write failed".into(),
            };
            format!("the log is stopped ({why}); writes are refused, reads still work; restart the server to recover")
        }
        Refusal::Internal => {
            tracing::error!(error = %e, "request failed");
            "internal error; the server's log has the details".into()
        }
        Refusal::BadRequest | Refusal::TooLarge => e.to_string(),
    }
}

/// The engine options the server runs with: `options` with the rules both
/// listeners share. Empty values are refused (the HTTP contract refuses an
/// empty body, and RESP follows it, so the two accept the same writes).
pub fn server_options(mut options: keel::Options) -> keel::Options {
    options.allow_empty_values = false;
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_refusal_is_told_by_its_variant() {
        assert_eq!(classify(&keel::Error::EmptyKey), Refusal::BadRequest);
        assert_eq!(classify(&keel::Error::EmptyValue), Refusal::BadRequest);
        let long = keel::Error::KeyTooLong { len: 9, max: 8 };
        assert_eq!(classify(&long), Refusal::TooLarge);
        assert!(message(&long).contains("max_key_len"));
        assert_eq!(classify(&keel::Error::Closed), Refusal::Internal);
        let io = keel::Error::Io {
            op: "reading",
            path: "/secret/place".into(),
            source: std::io::Error::other("boom"),
        };
        assert!(!message(&io).contains("/secret"), "{}", message(&io));
    }
}
