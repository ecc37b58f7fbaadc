//! Who may connect: one shared secret, the auth token, that both listeners
//! check when it is set (`keel serve --auth-token-file`, or `KEEL_AUTH_TOKEN`).
//!
//! - HTTP: every endpoint but `/health` needs `Authorization: Bearer <token>`;
//!   without it, 401 and nothing changes.
//! - RESP: a connection must send `AUTH <token>` (or `AUTH default <token>`,
//!   what `redis-cli -a` and the `redis` crate send) before anything but
//!   `AUTH` and `QUIT`; other commands get Redis's `-NOAUTH`, a wrong token
//!   `-WRONGPASS`.
//!
//! Tokens are compared in constant time (for equal lengths), so response
//! timing does not reveal how much of a guess was right.

/// The auth token both listeners check.
pub struct AuthToken(Vec<u8>);

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Empty (after trimming whitespace).
    #[error("the auth token is empty")]
    Empty,
    /// Holds whitespace or control characters, which neither an HTTP header
    /// nor a RESP inline command carries intact.
    #[error("the auth token holds whitespace or control characters; use letters, digits and punctuation")]
    BadCharacters,
}

impl AuthToken {
    /// The token `secret`, with surrounding whitespace (a file's trailing
    /// newline) trimmed.
    pub fn new(secret: &str) -> Result<AuthToken, TokenError> {
        let t = secret.trim();
        if t.is_empty() {
            return Err(TokenError::Empty);
        }
        if t.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(TokenError::BadCharacters);
        }
        Ok(AuthToken(t.as_bytes().to_vec()))
    }

    /// Whether `given` is the token. Constant time in the token's length.
    pub fn matches(&self, given: &[u8]) -> bool {
        if given.len() != self.0.len() {
            return false;
        }
        // Fold every byte's difference, never stopping early.
        self.0
            .iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Whether an HTTP `Authorization` header value carries the token.
    pub fn allows_header(&self, authorization: Option<&[u8]>) -> bool {
        authorization
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .is_some_and(|t| self.matches(t))
    }
}

/// What the RESP auth gate did with a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Run it.
    Pass,
    /// Answered here (AUTH, or refused for want of it): do not run it.
    Answered,
}

/// The RESP auth gate, in front of every command of a connection whose
/// state is `authed`.
pub fn resp_gate(
    token: Option<&AuthToken>,
    authed: &mut bool,
    args: &[Vec<u8>],
    out: &mut Vec<u8>,
) -> Gate {
    let Some(name) = args.first() else {
        return Gate::Pass;
    };
    if name.eq_ignore_ascii_case(b"AUTH") {
        let secret = match args.len() {
            2 => Some(&args[1]),
            3 if args[1] == b"default" => Some(&args[2]),
            3 => None,
            _ => {
                out.extend_from_slice(b"-ERR wrong number of arguments for 'auth' command\r\n");
                return Gate::Answered;
            }
        };
        let reply: &[u8] = match (token, secret) {
            (None, _) => b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
            (Some(t), Some(s)) if t.matches(s) => {
                *authed = true;
                b"+OK\r\n"
            }
            (Some(_), _) => {
                tracing::warn!("RESP: wrong auth token");
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
            }
        };
        out.extend_from_slice(reply);
        return Gate::Answered;
    }
    if token.is_none() || *authed {
        return Gate::Pass;
    }
    // Before AUTH only QUIT runs, and an HTTP request's first line (POST,
    // Host:), which closes the connection.
    let upper = name.to_ascii_uppercase();
    if matches!(upper.as_slice(), b"QUIT" | b"POST" | b"HOST:") {
        return Gate::Pass;
    }
    out.extend_from_slice(b"-NOAUTH Authentication required.\r\n");
    Gate::Answered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Vec<u8>> {
        a.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn tokens_match_only_exactly() {
        let t = AuthToken::new("s3cret-token\n").unwrap();
        assert!(t.matches(b"s3cret-token"));
        for wrong in [&b"s3cret-tokeN"[..], b"s3cret-toke", b"s3cret-token!", b""] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
        assert!(t.allows_header(Some(b"Bearer s3cret-token")));
        assert!(!t.allows_header(Some(b"Basic s3cret-token")));
        assert!(!t.allows_header(None));
        assert!(matches!(AuthToken::new("  \n"), Err(TokenError::Empty)));
        assert!(matches!(
            AuthToken::new("a b"),
            Err(TokenError::BadCharacters)
        ));
    }

    #[test]
    fn resp_needs_auth_first_and_says_so_as_redis_does() {
        let t = AuthToken::new("tok").unwrap();
        let mut authed = false;
        let mut out = Vec::new();
        let mut gate = |a: &[&str], out: &mut Vec<u8>| {
            out.clear();
            resp_gate(Some(&t), &mut authed, &args(a), out)
        };
        assert_eq!(gate(&["SET", "k", "v"], &mut out), Gate::Answered);
        assert_eq!(out, b"-NOAUTH Authentication required.\r\n");
        assert_eq!(gate(&["QUIT"], &mut out), Gate::Pass);
        assert_eq!(gate(&["AUTH", "nope"], &mut out), Gate::Answered);
        assert!(out.starts_with(b"-WRONGPASS"));
        assert_eq!(gate(&["AUTH", "default", "tok"], &mut out), Gate::Answered);
        assert_eq!(out, b"+OK\r\n");
        assert_eq!(gate(&["SET", "k", "v"], &mut out), Gate::Pass);
        let mut free = false;
        out.clear();
        assert_eq!(
            resp_gate(None, &mut free, &args(&["AUTH", "x"]), &mut out),
            Gate::Answered
        );
        assert!(out.starts_with(b"-ERR AUTH <password> called without"));
        assert_eq!(
            resp_gate(None, &mut free, &args(&["GET", "k"]), &mut out),
            Gate::Pass
        );
    }
}
