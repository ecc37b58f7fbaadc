//! RESP2 encoding: the reply encoders, a command as a client sends it, and
//! the length of a reply (for clients and tests). Parsing commands is
//! [`super::parser`]'s.

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
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

    #[test]
    fn encoded_commands_parse_back_and_replies_are_measured() {
        let args = vec![b"SET".to_vec(), b"k\r\n".to_vec(), Vec::new()];
        let wire = encode_command(&args);
        assert_eq!(wire, b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n");
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
}
