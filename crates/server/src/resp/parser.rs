//! The incremental RESP2 command parser: arrays of bulk strings, and inline
//! commands, read as bytes arrive.
//!
//! A connection owns one [`CommandParser`], which remembers how far it got:
//! the arguments of a command already taken, the length of the bulk string
//! whose header it read, and how much of an unfinished line it has already
//! searched. So each byte is examined a bounded number of times however the
//! input is split (a 1M-argument `MSET` dripped one byte at a time costs what
//! it costs sent at once), where re-parsing from the start of the command on
//! every read made that quadratic.
//!
//! Limits and error texts are Redis's (`networking.c`): a header line longer
//! than [`MAX_LINE`] without its end, a multibulk count over
//! [`RespLimits::max_args`], a bulk length over [`RespLimits::max_bulk`]
//! (`proto-max-bulk-len`), and, before `AUTH` when a token is required, more
//! than [`UNAUTHENTICATED_MAX_ARGS`] arguments or a bulk string over
//! [`UNAUTHENTICATED_MAX_BULK`]. The whole command is bounded by
//! [`RespLimits::max_pending`] (`client-query-buffer-limit`): bytes taken
//! into arguments count as well as those not yet parsed. After a
//! [`ProtocolError`] the frame boundary is lost: the connection must close.
//! As in Redis, `*0` and `*-1` (and blank inline lines) are no command.

use keel::Db;

/// Longest header or inline line (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const MAX_LINE: usize = 64 * 1024;
/// Most arguments of a command sent before `AUTH` when a token is required.
pub const UNAUTHENTICATED_MAX_ARGS: usize = 10;
/// Longest bulk string sent before `AUTH` when a token is required.
pub const UNAUTHENTICATED_MAX_BULK: usize = 16 * 1024;
/// Most arguments of one command: an `MSET` of half a million pairs.
pub const MAX_ARGS: usize = 1 << 20;

/// Limits of one connection.
#[derive(Clone, Copy, Debug)]
pub struct RespLimits {
    /// Longest bulk string accepted (`proto-max-bulk-len`).
    pub max_bulk: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Most bytes one command may hold, parsed or not
    /// (`client-query-buffer-limit`).
    pub max_pending: usize,
}

impl RespLimits {
    /// Limits that fit the store's options: a bulk string as long as the
    /// longest key or value, a command as large as the largest batch.
    pub fn for_db(db: &Db) -> Self {
        let o = db.options();
        RespLimits {
            max_bulk: o.max_value_len.max(o.max_key_len),
            max_args: MAX_ARGS,
            max_pending: o.max_batch_bytes.saturating_add(1 << 20),
        }
    }
}

/// Bytes that are not RESP, or over a limit. The text is Redis's, without
/// the `ERR Protocol error: ` that the reply puts before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

fn protocol(why: impl Into<String>) -> ProtocolError {
    ProtocolError(why.into())
}

/// Where the parser is in the current command.
#[derive(Debug, Default)]
enum State {
    /// Between commands.
    #[default]
    Start,
    /// In an inline command's line.
    Inline,
    /// Reading the multibulk's arguments: how many are still to come, and
    /// the length of the next one once its `$` header was read.
    Args {
        remaining: usize,
        bulk: Option<usize>,
    },
}

/// The parser of one connection's command stream; see the module doc.
#[derive(Debug, Default)]
pub struct CommandParser {
    state: State,
    /// Arguments of the current command taken so far.
    args: Vec<Vec<u8>>,
    /// Input bytes those arguments came from (headers included).
    taken: usize,
    /// Bytes of the unfinished line at the parse position already searched
    /// for its end, so a line arriving a byte at a time is searched once.
    scanned: usize,
}

impl CommandParser {
    /// A parser between commands.
    pub fn new() -> CommandParser {
        CommandParser::default()
    }

    /// Bytes the current unfinished command holds outside the input buffer.
    pub fn held(&self) -> usize {
        self.taken
    }

    /// Whether the parser is between commands (nothing taken, no line begun).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Start) && self.scanned == 0
    }

    /// Parses from `buf[*pos..]`, advancing `*pos` past every byte it takes.
    /// `Ok(Some(args))`: a complete command (never empty). `Ok(None)`: the
    /// bytes so far are taken or remembered; more are needed. The caller may
    /// drop `buf[..*pos]` between calls (and must keep the rest).
    /// `unauthenticated`: the client has yet to `AUTH` on a listener that
    /// requires it, so Redis's tighter limits apply.
    ///
    /// One match over the parser's states, kept whole on purpose: each arm
    /// is one step of the protocol (header, inline line, bulk header, bulk
    /// body), and reading them in order is reading RESP.
    pub fn next(
        &mut self,
        buf: &[u8],
        pos: &mut usize,
        limits: &RespLimits,
        unauthenticated: bool,
    ) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        loop {
            match self.state {
                State::Start => {
                    let Some(&first) = buf.get(*pos) else {
                        return Ok(None);
                    };
                    self.state = if first == b'*' {
                        let Some(line) = self.line(buf, *pos, "too big mbulk count string")? else {
                            return Ok(None);
                        };
                        let n = parse_int(&buf[*pos + 1..line])
                            .filter(|&n| n <= i64::from(i32::MAX))
                            .ok_or_else(|| protocol("invalid multibulk length"))?;
                        if unauthenticated && n > UNAUTHENTICATED_MAX_ARGS as i64 {
                            return Err(protocol("unauthenticated multibulk length"));
                        }
                        if n > limits.max_args as i64 {
                            return Err(protocol("invalid multibulk length"));
                        }
                        self.consume(pos, line + 2);
                        if n <= 0 {
                            self.taken = 0;
                            continue; // no command, as in Redis
                        }
                        let n = n as usize;
                        self.args = Vec::with_capacity(n.min(1024));
                        State::Args {
                            remaining: n,
                            bulk: None,
                        }
                    } else {
                        State::Inline
                    };
                }
                State::Inline => {
                    let Some(end) = self.inline_end(buf, *pos)? else {
                        return Ok(None);
                    };
                    let mut line = &buf[*pos..end];
                    if line.last() == Some(&b'\r') {
                        line = &line[..line.len() - 1];
                    }
                    let args = split_inline(line)?;
                    // The same bound as a multibulk's count, so a command
                    // means the same whichever form it came in.
                    if args.len() > limits.max_args {
                        return Err(protocol("too many arguments in inline request"));
                    }
                    self.consume(pos, end + 1);
                    self.reset();
                    if !args.is_empty() {
                        return Ok(Some(args));
                    }
                }
                State::Args {
                    remaining,
                    bulk: None,
                } => {
                    let Some(&first) = buf.get(*pos) else {
                        return Ok(None);
                    };
                    if first != b'$' {
                        return Err(protocol(format!(
                            "expected '$', got '{}'",
                            char::from(first).escape_default()
                        )));
                    }
                    let Some(line) = self.line(buf, *pos, "too big bulk count string")? else {
                        return Ok(None);
                    };
                    let len = parse_int(&buf[*pos + 1..line])
                        .filter(|&n| n >= 0 && n as u64 <= limits.max_bulk as u64)
                        .ok_or_else(|| protocol("invalid bulk length"))?
                        as usize;
                    if unauthenticated && len > UNAUTHENTICATED_MAX_BULK {
                        return Err(protocol("unauthenticated bulk length"));
                    }
                    self.consume(pos, line + 2);
                    self.state = State::Args {
                        remaining,
                        bulk: Some(len),
                    };
                }
                State::Args {
                    remaining,
                    bulk: Some(len),
                } => {
                    // The body is not examined until it is all here: only
                    // the buffer's length is looked at meanwhile.
                    let stop = *pos + len;
                    if buf.len() < stop + 2 {
                        return Ok(None);
                    }
                    if &buf[stop..stop + 2] != b"\r\n" {
                        return Err(protocol("bulk string not followed by CRLF"));
                    }
                    self.args.push(buf[*pos..stop].to_vec());
                    self.consume(pos, stop + 2);
                    if remaining == 1 {
                        let args = std::mem::take(&mut self.args);
                        self.reset();
                        return Ok(Some(args));
                    }
                    self.state = State::Args {
                        remaining: remaining - 1,
                        bulk: None,
                    };
                }
            }
        }
    }

    /// Takes `buf[*pos..to]` into the current command.
    fn consume(&mut self, pos: &mut usize, to: usize) {
        self.taken += to - *pos;
        *pos = to;
        self.scanned = 0;
    }

    fn reset(&mut self) {
        self.state = State::Start;
        self.taken = 0;
        self.scanned = 0;
    }

    /// The position of the `\r` ending the header line at `start` (which
    /// must be followed by `\n`), searching only bytes not searched before;
    /// `None` while it has not arrived.
    fn line(
        &mut self,
        buf: &[u8],
        start: usize,
        too_big: &str,
    ) -> Result<Option<usize>, ProtocolError> {
        let from = start + self.scanned;
        match buf[from..].iter().position(|&b| b == b'\r') {
            Some(i) => {
                let cr = from + i;
                // Judged by length whether or not the end has arrived, so
                // the outcome does not depend on how the input was split.
                if cr - start > MAX_LINE {
                    return Err(protocol(too_big));
                }
                // Found: remember it, so a missing `\n` costs no re-scan.
                self.scanned = cr - start;
                match buf.get(cr + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some(cr)),
                    Some(_) => Err(protocol("header line not ended by CRLF")),
                }
            }
            None => {
                self.scanned = buf.len() - start;
                if self.scanned > MAX_LINE {
                    return Err(protocol(too_big));
                }
                Ok(None)
            }
        }
    }

    /// The position of the `\n` ending the inline line at `start`.
    fn inline_end(&mut self, buf: &[u8], start: usize) -> Result<Option<usize>, ProtocolError> {
        let from = start + self.scanned;
        match buf[from..].iter().position(|&b| b == b'\n') {
            Some(i) if from + i - start > MAX_LINE => Err(protocol("too big inline request")),
            Some(i) => Ok(Some(from + i)),
            None => {
                self.scanned = buf.len() - start;
                if self.scanned > MAX_LINE {
                    return Err(protocol("too big inline request"));
                }
                Ok(None)
            }
        }
    }
}

fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Splits an inline command line into arguments as Redis does
/// (`sdssplitargs`): whitespace separates; `"..."` takes the escapes `\n`,
/// `\r`, `\t`, `\b`, `\a`, `\\`, `\"` and `\xHH`; `'...'` takes `\'`; a closing
/// quote must be followed by whitespace or the end of the line.
pub fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let unbalanced = || protocol("unbalanced quotes in request");
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

/// Every command in `input`, fed in pieces of the given sizes (cycled; a 0
/// is taken as 1) as a connection would read them, the buffer compacted
/// between reads as the event loop does; then how it ended: `Ok(n)` with
/// `n` bytes left unparsed, or the protocol error. For tests and fuzzing:
/// any split of the same bytes must give the same result.
pub fn parse_split(
    input: &[u8],
    pieces: &[usize],
    limits: &RespLimits,
) -> (Vec<Vec<Vec<u8>>>, Result<usize, ProtocolError>) {
    let mut parser = CommandParser::new();
    let mut buf = Vec::new();
    let mut pos = 0;
    let mut fed = 0;
    let mut commands = Vec::new();
    let mut piece = pieces.iter().copied().cycle();
    while fed < input.len() {
        let n = piece.next().unwrap_or(input.len()).max(1);
        let to = (fed + n).min(input.len());
        buf.drain(..pos);
        pos = 0;
        buf.extend_from_slice(&input[fed..to]);
        fed = to;
        loop {
            match parser.next(&buf, &mut pos, limits, false) {
                Ok(Some(args)) => commands.push(args),
                Ok(None) => break,
                Err(e) => return (commands, Err(e)),
            }
        }
    }
    (commands, Ok(buf.len() - pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::frame::encode_command;
    use proptest::prelude::*;

    const L: RespLimits = RespLimits {
        max_bulk: 16,
        max_args: 8,
        max_pending: 1024,
    };

    fn all(input: &[u8]) -> (Vec<Vec<Vec<u8>>>, Result<usize, ProtocolError>) {
        parse_split(input, &[input.len()], &L)
    }

    fn strings(cmds: &[Vec<Vec<u8>>]) -> Vec<Vec<String>> {
        cmds.iter()
            .map(|c| {
                c.iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn parses_arrays_inline_and_pipelines() {
        let (cmds, rest) =
            all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\nSET a  b\nECHO x\r\n*3\r\n$1");
        assert_eq!(
            strings(&cmds),
            [
                vec!["GET", "k"],
                vec!["PING"],
                vec!["SET", "a", "b"],
                vec!["ECHO", "x"]
            ]
        );
        assert_eq!(rest, Ok(2), "an unfinished header line stays in the buffer");
        let wire = encode_command(&[&b"SET"[..], b"k\r\n", b""]);
        assert_eq!(
            all(&wire),
            (
                vec![vec![b"SET".to_vec(), b"k\r\n".to_vec(), vec![]]],
                Ok(0)
            )
        );
    }

    #[test]
    fn empty_commands_are_skipped_as_redis_does() {
        let (cmds, rest) = all(b"*0\r\n*-1\r\n\r\n   \n*1\r\n$4\r\nPING\r\n");
        assert_eq!(strings(&cmds), [vec!["PING"]]);
        assert_eq!(rest, Ok(0));
    }

    #[test]
    fn inline_commands_take_quotes_and_escapes_as_redis_does() {
        let args = |line: &str| {
            let (cmds, rest) = all(format!("{line}\r\n").as_bytes());
            rest.map(|_| strings(&cmds).concat())
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
                Err(protocol("unbalanced quotes in request")),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_frames_get_redis_error_texts() {
        let cases: [(&[u8], &str); 7] = [
            (b"*1\r\n$99\r\n", "invalid bulk length"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
            (b"*1\r\n:1\r\n", "expected '$', got ':'"),
            (b"*1\r\n$1\r\nabc\r\n", "bulk string not followed by CRLF"),
            (b"*x\r\n", "invalid multibulk length"),
            (b"*99\r\n", "invalid multibulk length"),
            (b"*3000000000\r\n", "invalid multibulk length"),
        ];
        for (input, want) in cases {
            assert_eq!(all(input).1, Err(protocol(want)), "{input:?}");
        }
        let many = format!("{}\r\n", "a ".repeat(9));
        assert_eq!(
            all(many.as_bytes()).1,
            Err(protocol("too many arguments in inline request"))
        );
        let long = vec![b'1'; MAX_LINE + 2];
        let mut header = b"*".to_vec();
        header.extend_from_slice(&long);
        assert_eq!(all(&header).1, Err(protocol("too big mbulk count string")));
        assert_eq!(all(&long).1, Err(protocol("too big inline request")));
    }

    #[test]
    fn unauthenticated_clients_get_redis_tighter_limits() {
        let limits = RespLimits {
            max_bulk: 1 << 20,
            max_args: 1 << 10,
            max_pending: 1 << 22,
        };
        let mut p = CommandParser::new();
        let mut pos = 0;
        assert_eq!(
            p.next(b"*11\r\n", &mut pos, &limits, true),
            Err(protocol("unauthenticated multibulk length"))
        );
        let mut p = CommandParser::new();
        let mut pos = 0;
        assert_eq!(
            p.next(b"*2\r\n$16385\r\n", &mut pos, &limits, true),
            Err(protocol("unauthenticated bulk length"))
        );
        let mut p = CommandParser::new();
        let mut pos = 0;
        assert!(p
            .next(b"*11\r\n$16385\r\n", &mut pos, &limits, false)
            .is_ok());
    }

    #[test]
    fn each_byte_is_examined_a_bounded_number_of_times() {
        // A 100,000-argument command dripped one byte at a time: the work
        // is that of parsing it whole (re-parsing from the start on every
        // byte would be 10^10 steps; this finishes at once).
        let limits = RespLimits {
            max_bulk: 16,
            max_args: 1 << 20,
            max_pending: 1 << 30,
        };
        let args: Vec<Vec<u8>> = (0..100_000u32)
            .map(|i| i.to_string().into_bytes())
            .collect();
        let wire = encode_command(&args);
        let (cmds, rest) = parse_split(&wire, &[1], &limits);
        assert_eq!(rest, Ok(0));
        assert_eq!(cmds, vec![args]);
        let mut p = CommandParser::new();
        let mut pos = 0;
        let half = wire.len() / 2;
        assert_eq!(p.next(&wire[..half], &mut pos, &limits, false), Ok(None));
        assert!(pos > half - 16, "taken bytes are consumed as they come");
        assert_eq!(p.held(), pos, "and counted against the query buffer limit");
    }

    fn frame() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..10)
                .prop_map(|a| encode_command(&a)),
            "[A-Za-z \"'\\\\]{0,20}".prop_map(|s| format!("{s}\r\n").into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ]
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_commands(
            frames in proptest::collection::vec(frame(), 0..8),
            pieces in proptest::collection::vec(1usize..40, 1..6),
        ) {
            let input = frames.concat();
            let limits = RespLimits { max_bulk: 16, max_args: 8, max_pending: 1 << 20 };
            let whole = parse_split(&input, &[input.len()], &limits);
            prop_assert_eq!(parse_split(&input, &pieces, &limits), whole);
        }
    }
}
