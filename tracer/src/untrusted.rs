//! Text that other processes chose about themselves — `comm`, command lines, cgroup paths,
//! anything else read from /proc — on its way to a human.
//!
//! Any user on the host can name a process `"\x1b]0;…"` or put newlines and 100 KiB into its
//! arguments, and tracer runs as root and prints that text into an operator's terminal, into
//! `tracer top` and into logs shipped off the host. [`Escaped`] is the one function every
//! human-facing sink uses for such text (the text output, `top`, log lines; `Comm`'s `Display`
//! is it): what it writes is one line of printable text, whatever the input:
//!
//! - a backslash becomes `\\`, so that every escape below is unambiguous;
//! - tab, newline and carriage return become `\t`, `\n`, `\r`; every other C0 control byte and
//!   DEL become `\xNN`;
//! - C1 controls (U+0080–U+009F, which some terminals obey as CSI/OSC) and the invisible
//!   format characters that reorder or hide text (bidirectional overrides and isolates,
//!   zero-width characters, line and paragraph separators, the BOM) become `\u{…}`;
//! - each byte of invalid UTF-8 becomes `\xNN`;
//! - past a bound the text is cut, visibly: `…[+N bytes]`.
//!
//! JSON is not a human-facing sink: it keeps the exact text, escaped by the JSON encoder
//! (invalid UTF-8, which a JSON string cannot carry, becomes U+FFFD there).
//!
//! [`redact_cmdline`] is the other half: secrets in command lines never enter a record unless
//! the operator asks for them (`--cmdline full`).

use std::fmt;

/// Most bytes of a command line a human-facing sink shows before the visible cut.
pub const CMDLINE_SHOWN_MAX: usize = 512;
/// Most bytes of a cgroup path or other /proc text shown before the cut.
pub const PATH_SHOWN_MAX: usize = 256;

/// `bytes` as one line of printable text, at most `max` input bytes of it (then the cut is
/// shown). Width and alignment (`{:<15}`) apply to the escaped text.
#[derive(Clone, Copy)]
pub struct Escaped<'a> {
    bytes: &'a [u8],
    max: usize,
    /// Bytes already cut before these (counted in the visible cut).
    more: usize,
}

impl<'a> Escaped<'a> {
    pub fn new(bytes: &'a [u8], max: usize) -> Self {
        Self {
            bytes,
            max,
            more: 0,
        }
    }

    pub fn str(text: &'a str, max: usize) -> Self {
        Self::new(text.as_bytes(), max)
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_none() {
            return escape_into(f, self.bytes, self.max, self.more);
        }
        // Padding needs the escaped length first: format on the stack (a comm's worst case,
        // 15 bytes as `\xNN`, is 60 bytes); what does not fit is written unpadded.
        let mut b = crate::output::StackStr::new();
        if escape_into(&mut b, self.bytes, self.max, self.more).is_ok() {
            f.pad(b.as_str())
        } else {
            escape_into(f, self.bytes, self.max, self.more)
        }
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Writes `bytes` escaped (see the module's rules) into `out`: at most `max` of them, then the
/// cut, which also counts `more` bytes cut before.
pub fn escape_into<W: fmt::Write + ?Sized>(
    out: &mut W,
    bytes: &[u8],
    max: usize,
    more: usize,
) -> fmt::Result {
    let mut shown = bytes;
    if bytes.len() > max {
        // Cut on a character boundary: back off over continuation bytes (at most three).
        let mut end = max;
        while end > 0 && max - end < 3 && bytes[end] & 0xc0 == 0x80 {
            end -= 1;
        }
        if bytes[end] & 0xc0 == 0x80 {
            end = max;
        }
        shown = &bytes[..end];
    }
    for chunk in shown.utf8_chunks() {
        escape_str(out, chunk.valid())?;
        for b in chunk.invalid() {
            write!(out, "\\x{b:02x}")?;
        }
    }
    let cut = bytes.len() - shown.len() + more;
    if cut > 0 {
        write!(out, "…[+{cut} bytes]")?;
    }
    Ok(())
}

fn escape_str<W: fmt::Write + ?Sized>(out: &mut W, s: &str) -> fmt::Result {
    // Fast path: printable ASCII without a backslash goes out as it is.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\') {
        return out.write_str(s);
    }
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let plain = match c {
            '\\' | '\t' | '\n' | '\r' => false,
            c if (c as u32) < 0x20 || c == '\u{7f}' => false,
            c if needs_unicode_escape(c) => false,
            _ => true,
        };
        if plain {
            continue;
        }
        out.write_str(&s[start..i])?;
        match c {
            '\\' => out.write_str("\\\\")?,
            '\t' => out.write_str("\\t")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32)?,
            c => write!(out, "\\u{{{:x}}}", c as u32)?,
        }
        start = i + c.len_utf8();
    }
    out.write_str(&s[start..])
}

/// C1 controls and the format characters that reorder, hide or break text on a terminal.
pub(crate) fn needs_unicode_escape(c: char) -> bool {
    matches!(c,
        '\u{80}'..='\u{9f}'       // C1 controls (8-bit CSI, OSC, NEL…)
        | '\u{ad}'                // soft hyphen (invisible)
        | '\u{61c}'               // Arabic letter mark
        | '\u{180e}'              // Mongolian vowel separator
        | '\u{200b}'..='\u{200f}' // zero-width space/joiners, LRM, RLM
        | '\u{2028}' | '\u{2029}' // line and paragraph separators
        | '\u{202a}'..='\u{202e}' // bidirectional embeddings and overrides
        | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
        | '\u{2066}'..='\u{2069}' // bidirectional isolates
        | '\u{feff}'              // BOM / zero-width no-break space
        | '\u{fff9}'..='\u{fffb}' // interlinear annotations
    )
}

/// What a record carries of an owner's command line (`--cmdline`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CmdlinePolicy {
    /// Every argument as the process has it.
    Full,
    /// The program and its arguments, with the values of secret-looking options and the
    /// passwords of URLs replaced by `***`.
    #[default]
    Redacted,
    /// No command line at all (`cmdline` is null).
    None,
}

/// What replaces a hidden value.
pub const HIDDEN: &str = "***";

/// Most bytes of /proc/PID/cmdline a record keeps; what is beyond is only counted.
pub const CMDLINE_KEPT_MAX: usize = 4096;

/// An owner's command line as a record carries it: the arguments joined by spaces, with the
/// `--cmdline` policy already applied (secrets never enter a record), the raw bytes kept so
/// that a human-facing sink shows invalid UTF-8 as escapes, and how many bytes were beyond
/// [`CMDLINE_KEPT_MAX`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmdline {
    bytes: Box<[u8]>,
    more: usize,
}

impl Cmdline {
    /// From /proc/PID/cmdline's bytes (NUL-separated; the first [`CMDLINE_KEPT_MAX`] of
    /// them), `more` bytes beyond them, under `policy`.
    pub fn from_proc(raw: &[u8], more: usize, policy: CmdlinePolicy) -> Option<Self> {
        let bytes = redact_cmdline(raw, policy)?;
        Some(Self {
            bytes: bytes.into_boxed_slice(),
            more,
        })
    }

    /// The exact text, for JSON: invalid UTF-8 as U+FFFD, then `…` if bytes were cut.
    pub fn exact(&self) -> std::borrow::Cow<'_, str> {
        let text = String::from_utf8_lossy(&self.bytes);
        if self.more == 0 {
            text
        } else {
            std::borrow::Cow::Owned(format!("{text}…"))
        }
    }

    /// The text for a human: escaped, cut at [`CMDLINE_SHOWN_MAX`] bytes.
    pub fn shown(&self) -> Escaped<'_> {
        Escaped {
            bytes: &self.bytes,
            max: CMDLINE_SHOWN_MAX,
            more: self.more,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl From<&str> for Cmdline {
    /// A command line given as text (fixtures, tests): kept whole.
    fn from(text: &str) -> Self {
        Self {
            bytes: text.as_bytes().into(),
            more: 0,
        }
    }
}

/// Option and variable names whose values are hidden wherever they appear in the name.
const SECRET_SUBSTRINGS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "credential",
    "privatekey",
    "accesskey",
];

/// Names hidden only as a whole word of the name (`--api-key`, `--auth`, `--db-pass`), since
/// as substrings they are common in harmless names (`--keyboard`, `--author`, `--passive`).
const SECRET_WORDS: &[&str] = &[
    "key", "auth", "pass", "pwd", "pw", "creds", "cred", "cookie", "session", "sig",
];

/// Whether an option or variable name (`--db-password`, `PGPASSWORD`, `api_key`) names a
/// secret.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.trim_start_matches('-').to_ascii_lowercase();
    if lower.is_empty() {
        return false;
    }
    if SECRET_SUBSTRINGS.iter().any(|s| lower.contains(s)) {
        return true;
    }
    lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| SECRET_WORDS.contains(&w))
}

/// The command line's arguments (NUL-separated, as in /proc/PID/cmdline) with the policy
/// applied, joined by spaces; `None` under [`CmdlinePolicy::None`] or for an empty line.
///
/// Redaction (the default) keeps the program and every argument, except:
/// - `--name=value`, `-name=value` and `NAME=value` whose name looks secret
///   ([`is_secret_name`]): the value becomes `***`;
/// - `--name value`, a secret-looking option followed by a separate argument that is not an
///   option: that argument becomes `***`;
/// - a URL's password, anywhere in an argument (`postgres://user:***@host/db`);
/// - an HTTP `Authorization:` header given as an argument (`-H 'Authorization: ***'`).
///
/// A short option glued to its value (`mysql -phunter2`) cannot be told from other short
/// options and is kept; `--cmdline none` is the choice where such tools run.
pub fn redact_cmdline(raw: &[u8], policy: CmdlinePolicy) -> Option<Vec<u8>> {
    if policy == CmdlinePolicy::None {
        return None;
    }
    let args: Vec<&[u8]> = raw.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
    if args.is_empty() || args.iter().all(|a| a.iter().all(|&b| b == b' ')) {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut hide_next = false;
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        if policy == CmdlinePolicy::Full || i == 0 {
            out.extend_from_slice(arg);
            continue;
        }
        if std::mem::take(&mut hide_next) && !arg.starts_with(b"-") {
            out.extend_from_slice(HIDDEN.as_bytes());
            continue;
        }
        let text = String::from_utf8_lossy(arg);
        if let Some((name, _)) = text.split_once('=')
            && !name.contains("://")
            && is_secret_name(name)
        {
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            out.extend_from_slice(HIDDEN.as_bytes());
            continue;
        }
        if text
            .get(..14)
            .is_some_and(|p| p.eq_ignore_ascii_case("authorization:"))
        {
            out.extend_from_slice(b"Authorization: ");
            out.extend_from_slice(HIDDEN.as_bytes());
            continue;
        }
        if text.starts_with('-') && !text.contains('=') && is_secret_name(&text) {
            hide_next = true;
        }
        redact_urls(arg, &mut out);
    }
    Some(out)
}

/// Copies `arg`, with the password of every `scheme://user:password@` in it hidden.
fn redact_urls(arg: &[u8], out: &mut Vec<u8>) {
    let mut rest = arg;
    while let Some(at) = find(rest, b"://") {
        let authority_start = at + 3;
        out.extend_from_slice(&rest[..authority_start]);
        rest = &rest[authority_start..];
        // The authority ends at the first '/', '?', '#' or space; the userinfo at its last '@'.
        let end = rest
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#' | b' ' | b',' | b';'))
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        if let Some(at_sign) = authority.iter().rposition(|&b| b == b'@') {
            let userinfo = &authority[..at_sign];
            if let Some(colon) = userinfo.iter().position(|&b| b == b':') {
                out.extend_from_slice(&userinfo[..=colon]);
                out.extend_from_slice(HIDDEN.as_bytes());
                out.extend_from_slice(&authority[at_sign..]);
                rest = &rest[end..];
                continue;
            }
        }
        out.extend_from_slice(authority);
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(b: &[u8]) -> String {
        Escaped::new(b, 64).to_string()
    }

    #[test]
    fn printable_text_is_unchanged() {
        assert_eq!(esc(b"nginx: worker process"), "nginx: worker process");
        assert_eq!(esc("héllo/ü 日本".as_bytes()), "héllo/ü 日本");
    }

    #[test]
    fn controls_and_invalid_utf8_become_visible_escapes() {
        assert_eq!(esc(b"\x1b[31mEVIL\x1b]0;"), "\\x1b[31mEVIL\\x1b]0;");
        assert_eq!(esc(b"a\nb\rc\td\0e\x7f"), "a\\nb\\rc\\td\\x00e\\x7f");
        assert_eq!(esc(b"back\\slash"), "back\\\\slash");
        assert_eq!(esc(b"bad\xff\xfeutf8"), "bad\\xff\\xfeutf8");
        // C1 CSI (U+009B) and a right-to-left override.
        assert_eq!(
            esc("x\u{9b}2Jy\u{202e}z".as_bytes()),
            "x\\u{9b}2Jy\\u{202e}z"
        );
        assert_eq!(esc("a\u{2028}b".as_bytes()), "a\\u{2028}b");
    }

    #[test]
    fn the_output_is_one_line_of_printable_text_whatever_the_input() {
        let all: Vec<u8> = (0..=255u8)
            .chain("\u{85}\u{2029}\u{feff}".bytes())
            .collect();
        let s = Escaped::new(&all, usize::MAX).to_string();
        for c in s.chars() {
            assert!(
                !c.is_control() && !needs_unicode_escape(c),
                "{c:?} in {s:?}"
            );
        }
    }

    #[test]
    fn the_cut_is_visible_and_on_a_character_boundary() {
        let long = vec![b'a'; 100 * 1024];
        let s = Escaped::new(&long, 512).to_string();
        assert_eq!(s.len(), 512 + "…[+101888 bytes]".len());
        assert!(s.ends_with("…[+101888 bytes]"), "{}", &s[500..]);
        // "é" is two bytes: a cut in its middle backs off before it.
        let s = Escaped::new("aé".as_bytes(), 2).to_string();
        assert_eq!(s, "a…[+2 bytes]");
    }

    #[test]
    fn padding_applies_to_the_escaped_text() {
        assert_eq!(format!("[{:<8}]", Escaped::new(b"a\nb", 16)), "[a\\nb    ]");
        assert_eq!(format!("[{:>6}]", Escaped::new(b"ab", 16)), "[    ab]");
        // Too long for the stack buffer: written whole, unpadded.
        let long = vec![0u8; 60];
        assert_eq!(
            format!("{:<4}", Escaped::new(&long, 100)),
            "\\x00".repeat(60)
        );
    }

    fn redact(args: &[&str]) -> String {
        let raw = args.join("\0");
        String::from_utf8(redact_cmdline(raw.as_bytes(), CmdlinePolicy::Redacted).unwrap()).unwrap()
    }

    #[test]
    fn secret_option_values_are_hidden() {
        assert_eq!(
            redact(&["srv", "--password=hunter2", "--port=80"]),
            "srv --password=*** --port=80"
        );
        assert_eq!(
            redact(&["srv", "--db-password", "hunter2", "-v"]),
            "srv --db-password *** -v"
        );
        assert_eq!(
            redact(&["srv", "--api-key=k1", "--keyboard=us"]),
            "srv --api-key=*** --keyboard=us"
        );
        assert_eq!(
            redact(&["env", "PGPASSWORD=pw", "AWS_SECRET_ACCESS_KEY=s", "psql"]),
            "env PGPASSWORD=*** AWS_SECRET_ACCESS_KEY=*** psql"
        );
        assert_eq!(
            redact(&["x", "--auth-token", "--verbose"]),
            "x --auth-token --verbose"
        );
        assert_eq!(
            redact(&["x", "--author=me", "--passive"]),
            "x --author=me --passive"
        );
        assert_eq!(
            redact(&["curl", "-H", "Authorization: Bearer abc", "u"]),
            "curl -H Authorization: *** u"
        );
    }

    #[test]
    fn a_multibyte_character_where_a_header_name_would_end_is_no_panic() {
        // Found by the fuzzer (fuzzing::tests::ring_record_corpus): byte 14 inside "é".
        assert_eq!(redact(&["x", "Authorizationé: y"]), "x Authorizationé: y");
        assert_eq!(redact(&["x", "aaaaaaaaaaaaaé"]), "x aaaaaaaaaaaaaé");
    }

    #[test]
    fn url_passwords_are_hidden_and_the_rest_stays() {
        assert_eq!(
            redact(&[
                "app",
                "postgres://u:p@h/db",
                "--dsn=mysql://root:pw@db:3306/x?a=b"
            ]),
            "app postgres://u:***@h/db --dsn=mysql://root:***@db:3306/x?a=b"
        );
        assert_eq!(
            redact(&["app", "http://host/path", "https://user@h/"]),
            "app http://host/path https://user@h/"
        );
        assert_eq!(
            redact(&["a", "x=redis://:pw@h,y=amqp://g:q@r"]),
            "a x=redis://:***@h,y=amqp://g:***@r"
        );
    }

    #[test]
    fn the_program_is_kept_and_full_and_none_do_what_they_say() {
        assert_eq!(
            redact(&["/usr/bin/token-server", "--x"]),
            "/usr/bin/token-server --x"
        );
        let raw = b"srv\0--password=hunter2\0";
        assert_eq!(
            redact_cmdline(raw, CmdlinePolicy::Full).unwrap(),
            b"srv --password=hunter2"
        );
        assert_eq!(redact_cmdline(raw, CmdlinePolicy::None), None);
        assert_eq!(redact_cmdline(b"\0\0", CmdlinePolicy::Redacted), None);
        assert_eq!(redact_cmdline(b"", CmdlinePolicy::Full), None);
    }
}
