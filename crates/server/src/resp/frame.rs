//! RESP2 frames: the command parser (arrays of bulk strings, and inline
//! commands) with its limits, and the reply encoders.
//!
//! The parser never trusts a length before checking it against a limit, and
//! never reads past the bytes it was given: a frame not yet complete is
//! `Incomplete`, bytes that are not RESP are a `Protocol` error (after which
//! the frame boundary is lost and the connection must close).

use keel::Db;

/// Limits of one connection.
#[derive(Clone, Copy, Debug)]
pub struct RespLimits {
    /// Longest bulk string accepted.
    pub max_bulk: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Most unparsed bytes buffered for one connection.
    pub max_pending: usize,
}

impl RespLimits {
    /// Limits that fit the store's options.
    pub fn for_db(db: &Db) -> Self {
        let o = db.options();
        RespLimits {
            max_bulk: o.max_value_len.max(o.max_key_len),
            max_args: 1 << 20,
            max_pending: o.max_batch_bytes.saturating_add(1 << 20),
        }
    }
}

/// Why a frame could not be parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not enough bytes yet.
    Incomplete,
    /// The bytes are not RESP (or over a limit): the connection must close.
    Protocol(String),
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Splits an inline command line into arguments as Redis does
/// (`sdssplitargs`): whitespace separates; `"..."` takes the escapes `\n`,
/// `\r`, `\t`, `\b`, `\a`, `\\`, `\"` and `\xHH`; `'...'` takes `\'`; a closing
/// quote must be followed by whitespace or the end of the line.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
    let unbalanced = || FrameError::Protocol("unbalanced quotes in request".into());
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        let mut quote: Option<u8> = None;
        loop {
            let Some(&c) = line.get(i) else {
                if quote.is_some() {
                    return Err(unbalanced());
                }
                break;
            };
            match quote {
                None if c.is_ascii_whitespace() => break,
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None => arg.push(c),
                Some(q) if c == q => {
                    if line.get(i + 1).is_some_and(|n| !n.is_ascii_whitespace()) {
                        return Err(unbalanced());
                    }
                    i += 1;
                    break;
                }
                Some(b'"') if c == b'\\' && i + 1 < line.len() => {
                    i += 1;
                    let hex = |b: u8| (b as char).to_digit(16);
                    match (
                        line[i],
                        line.get(i + 1).and_then(|&b| hex(b)),
                        line.get(i + 2).and_then(|&b| hex(b)),
                    ) {
                        (b'x', Some(h), Some(l)) => {
                            arg.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        (b'n', ..) => arg.push(b'\n'),
                        (b'r', ..) => arg.push(b'\r'),
                        (b't', ..) => arg.push(b'\t'),
                        (b'b', ..) => arg.push(0x08),
                        (b'a', ..) => arg.push(0x07),
                        (other, ..) => arg.push(other),
                    }
                }
                Some(b'\'') if c == b'\\' && line.get(i + 1) == Some(&b'\'') => {
                    i += 1;
                    arg.push(b'\'');
                }
                Some(_) => arg.push(c),
            }
            i += 1;
        }
        args.push(arg);
    }
}

/// Parses one command (an array of bulk strings, or an inline line) from
/// the start of `buf`: the arguments and the bytes consumed.
pub fn parse_command(buf: &[u8], limits: &RespLimits) -> Result<(Vec<Vec<u8>>, usize), FrameError> {
    let Some(&first) = buf.first() else {
        return Err(FrameError::Incomplete);
    };
    if first != b'*' {
        // Inline command (telnet, redis-cli in some modes): one line.
        let Some(end) = find_crlf(buf, 0).or_else(|| buf.iter().position(|&b| b == b'\n')) else {
            if buf.len() > 64 * 1024 {
                return Err(FrameError::Protocol("too big inline request".into()));
            }
            return Err(FrameError::Incomplete);
        };
        let line = &buf[..end];
        let consumed = if buf.get(end) == Some(&b'\r') {
            end + 2
        } else {
            end + 1
        };
        return Ok((split_inline(line)?, consumed));
    }
    let end = find_crlf(buf, 1).ok_or(FrameError::Incomplete)?;
    let n = parse_int(&buf[1..end])
        .ok_or_else(|| FrameError::Protocol("invalid multibulk length".into()))?;
    if n < 0 || n as usize > limits.max_args {
        return Err(FrameError::Protocol("invalid multibulk length".into()));
    }
    let mut pos = end + 2;
    let mut args = Vec::with_capacity((n as usize).min(1024));
    for _ in 0..n {
        match buf.get(pos) {
            None => return Err(FrameError::Incomplete),
            Some(b'$') => {}
            Some(&c) => {
                return Err(FrameError::Protocol(format!(
                    "expected '$', got '{}'",
                    char::from(c).escape_default()
                )))
            }
        }
        let end = find_crlf(buf, pos + 1).ok_or(FrameError::Incomplete)?;
        let len = parse_int(&buf[pos + 1..end])
            .ok_or_else(|| FrameError::Protocol("invalid bulk length".into()))?;
        if len < 0 || len as usize > limits.max_bulk {
            return Err(FrameError::Protocol("invalid bulk length".into()));
        }
        let start = end + 2;
        let stop = start + len as usize;
        if buf.len() < stop + 2 {
            return Err(FrameError::Incomplete);
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err(FrameError::Protocol(
                "bulk string not followed by CRLF".into(),
            ));
        }
        args.push(buf[start..stop].to_vec());
        pos = stop + 2;
    }
    Ok((args, pos))
}

pub(crate) fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn error(out: &mut Vec<u8>, s: &str) {
    out.push(b'-');
    // An error line must not contain CR or LF.
    out.extend(
        s.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn integer(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(format!(":{n}\r\n").as_bytes());
}

pub(crate) fn bulk(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.extend_from_slice(b"$-1\r\n"),
        Some(b) => {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
    }
}

pub(crate) fn array_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(format!("*{n}\r\n").as_bytes());
}

/// A command as a client sends it: an array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The length of the one RESP2 reply at the start of `b` (simple string,
/// error, integer, bulk string or array of those), or `None` while it is
/// incomplete or if it is malformed. For clients and tests.
pub fn reply_len(b: &[u8]) -> Option<usize> {
    let line = find_crlf(b, 0)?;
    match *b.first()? {
        b'+' | b'-' | b':' => Some(line + 2),
        b'$' => {
            let n = parse_int(&b[1..line])?;
            if n < 0 {
                return Some(line + 2);
            }
            let total = line + 2 + usize::try_from(n).ok()? + 2;
            (b.len() >= total && &b[total - 2..total] == b"\r\n").then_some(total)
        }
        b'*' => {
            let n = parse_int(&b[1..line])?;
            let mut pos = line + 2;
            for _ in 0..n.max(0) {
                pos += reply_len(b.get(pos..)?)?;
            }
            Some(pos)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: RespLimits = RespLimits {
        max_bulk: 16,
        max_args: 8,
        max_pending: 1024,
    };

    #[test]
    fn encoded_commands_parse_back_and_replies_are_measured() {
        let args = vec![b"SET".to_vec(), b"k\r\n".to_vec(), Vec::new()];
        let wire = encode_command(&args);
        assert_eq!(parse_command(&wire, &L), Ok((args, wire.len())));
        let replies: [&[u8]; 5] = [
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":12\r\n",
            b"$-1\r\n",
            b"*2\r\n$1\r\na\r\n:1\r\n",
        ];
        for r in replies {
            assert_eq!(reply_len(r), Some(r.len()));
            for cut in 0..r.len() {
                assert_eq!(reply_len(&r[..cut]), None, "{r:?} cut at {cut}");
            }
        }
        assert_eq!(
            reply_len(b"$1\r\nab\r\n"),
            None,
            "bulk not followed by CRLF"
        );
        assert_eq!(reply_len(b"?\r\n"), None);
    }

    #[test]
    fn parses_arrays_inline_and_pipelines() {
        let b = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        let (args, used) = parse_command(b, &L).unwrap();
        assert_eq!(args, vec![b"GET".to_vec(), b"k".to_vec()]);
        let (args, _) = parse_command(&b[used..], &L).unwrap();
        assert_eq!(args, vec![b"PING".to_vec()]);
        assert_eq!(
            parse_command(b"PING\r\n", &L).unwrap().0,
            vec![b"PING".to_vec()]
        );
        assert_eq!(
            parse_command(b"SET a  b\n", &L).unwrap(),
            (vec![b"SET".to_vec(), b"a".to_vec(), b"b".to_vec()], 9)
        );
    }

    #[test]
    fn inline_commands_take_quotes_and_escapes_as_redis_does() {
        let args = |line: &str| {
            parse_command(format!("{line}\r\n").as_bytes(), &L).map(|(a, _)| {
                a.into_iter()
                    .map(|x| String::from_utf8_lossy(&x).into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(args(r#"SET "a b" "c d""#).unwrap(), ["SET", "a b", "c d"]);
        assert_eq!(
            args(r#"SET 'it\'s' "tab\there""#).unwrap(),
            ["SET", "it's", "tab\there"]
        );
        assert_eq!(args(r#"SET k "\x41\x42\n""#).unwrap(), ["SET", "k", "AB\n"]);
        assert_eq!(args(r#"SET k "" "#).unwrap(), ["SET", "k", ""]);
        assert_eq!(args(r#"SET a"b c" v"#).unwrap(), ["SET", "ab c", "v"]);
        for bad in [r#"SET "a"#, r#"SET 'a"#, r#"SET "a"b"#, r#"SET 'a'b"#] {
            assert_eq!(
                args(bad),
                Err(FrameError::Protocol("unbalanced quotes in request".into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn partial_frames_wait_and_bad_frames_are_protocol_errors() {
        let b = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        for cut in 0..b.len() {
            assert_eq!(
                parse_command(&b[..cut], &L),
                Err(FrameError::Incomplete),
                "cut {cut}"
            );
        }
        assert!(matches!(
            parse_command(b"*1\r\n$99\r\n", &L),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*-5\r\n", &L),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*1\r\n:1\r\n", &L),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*1\r\n$1\r\nabc\r\n", &L),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*x\r\n", &L),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*99\r\n", &L),
            Err(FrameError::Protocol(_))
        ));
    }
}
