//! Templated values in `shell` scripts travel as environment variables.
//!
//! Quoting a value by where it sits in a script is fragile: a template inside
//! double quotes, single quotes or a here-document needs a different quoting,
//! and a mistake runs the value as shell code. So no value is ever written
//! into a script. The shell registry's escape function wraps each value in a
//! *hole* (two private-use characters around its hex encoding, so a value can
//! never contain a hole's delimiters or a quote). [`bind`] then reads the
//! rendered script — the author's text plus opaque holes — with a small
//! model of `sh` quoting, and replaces hole *n* by a reference to the
//! variable `TW_n`, which the process gets in its environment:
//!
//! | where the hole sits | written as |
//! |---|---|
//! | unquoted, `$( )`, backticks | `"${TW_n}"` (one word, never split or globbed) |
//! | inside `"..."`, an unquoted here-document | `${TW_n}` |
//! | inside `'...'`, a quoted here-document (`<<'EOF'`) | an error: nothing expands there |
//!
//! Whatever the model gets wrong can only change how a value is split into
//! words, never make `sh` parse a value: the value is not in the script.
//! Validation runs the same model over a script's source, with each
//! `{{expression}}` as a hole, to report a template inside single quotes at
//! its position ([`holes_in_source`]).
//!
//! Written by hand: no crate models POSIX `sh` quoting contexts (shell-words
//! splitting crates like `shlex` parse words, not where an expansion sits).

/// Opens a hole in rendered output.
const OPEN: char = '\u{E000}';
/// Closes a hole.
const CLOSE: char = '\u{E001}';
/// The prefix of the variables that carry templated values (`TW_1`, `TW_2`, …).
pub const VAR_PREFIX: &str = "TW_";

/// The escape function of the shell registry: a value as a hole.
pub fn hole(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(value.len() * 2 + 6);
    s.push(OPEN);
    for b in value.bytes() {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s.push(CLOSE);
    s
}

/// Where a hole sits in a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Outside quotes (also inside `$( )` and backticks).
    Unquoted,
    /// Inside double quotes or an unquoted here-document.
    Quoted,
    /// Inside single quotes: nothing expands.
    SingleQuoted,
    /// Inside a here-document whose delimiter is quoted: nothing expands.
    QuotedHeredoc,
    /// In a comment: nothing runs.
    Comment,
}

impl Context {
    /// Why a value cannot be inserted here, if it cannot.
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            Context::SingleQuoted => Some("a template inside single quotes: nothing expands between `'...'`"),
            Context::QuotedHeredoc => Some("a template inside a here-document with a quoted delimiter: nothing expands there"),
            _ => None,
        }
    }
}

/// A script ready for `sh -c`, and the variables it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub script: String,
    /// `(TW_n, value)`, in order.
    pub vars: Vec<(String, String)>,
}

/// Why a rendered script cannot be bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}; use double quotes (\"{{{{...}}}}\") or none")]
pub struct BindError(pub &'static str);

/// Replace the holes of a rendered script by variable references.
pub fn bind(rendered: &str) -> Result<Bound, BindError> {
    if !rendered.contains(OPEN) {
        return Ok(Bound { script: rendered.to_string(), vars: Vec::new() });
    }
    let mut script = String::with_capacity(rendered.len());
    let mut vars = Vec::new();
    let mut refusal = None;
    let mut last = 0;
    scan(rendered, |at, end, ctx| {
        script.push_str(&rendered[last..at]);
        last = end;
        if let Some(why) = ctx.refusal() {
            refusal.get_or_insert(why);
            return;
        }
        let name = format!("{VAR_PREFIX}{}", vars.len() + 1);
        match ctx {
            Context::Unquoted => script.push_str(&format!("\"${{{name}}}\"")),
            _ => script.push_str(&format!("${{{name}}}")),
        }
        vars.push((name, decode(&rendered[at + OPEN.len_utf8()..end - CLOSE.len_utf8()])));
    });
    if let Some(why) = refusal {
        return Err(BindError(why));
    }
    script.push_str(&rendered[last..]);
    if script.contains(OPEN) {
        // A hole the model did not reach (inside a here-document's
        // delimiter, say): never hand its text to the shell.
        return Err(BindError("a template where the shell cannot take a value"));
    }
    Ok(Bound { script, vars })
}

fn decode(hex: &str) -> String {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    };
    let bytes: Vec<u8> = hex.as_bytes().chunks_exact(2).map(|p| nibble(p[0]) << 4 | nibble(p[1])).collect();
    // The bytes were a `&str`: valid UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The `{{expression}}` tags of a script's template source that insert a
/// value, each with its byte range in `source` and its quoting context.
/// Block tags (`{{#if}}`, `{{/if}}`, `{{else}}`) and comments insert nothing.
pub fn holes_in_source(source: &str) -> Vec<(std::ops::Range<usize>, Context)> {
    // The source with every value tag replaced by an empty hole; block tags
    // and comments removed.
    let mut text = String::with_capacity(source.len());
    let mut tags = Vec::new();
    let mut rest = 0;
    while let Some(open) = source[rest..].find("{{").map(|o| rest + o) {
        text.push_str(&source[rest..open]);
        let body = &source[open + 2..];
        let (close, inserts) = if body.starts_with("!--") {
            (body.find("--}}").map(|c| c + 4), false)
        } else {
            let inner = body.trim_start_matches(['~', '{', '&']).trim_start();
            let inserts = !(inner.starts_with(['#', '/', '^', '!', '>']) || inner.starts_with("else"));
            (body.find("}}").map(|c| c + 2), inserts)
        };
        let Some(close) = close else {
            // An unclosed tag is a parse error reported elsewhere.
            text.push_str(&source[open..]);
            rest = source.len();
            break;
        };
        let end = open + 2 + close;
        let end = if source[end..].starts_with('}') { end + 1 } else { end };
        if inserts {
            tags.push((open..end, text.len()));
            text.push(OPEN);
            text.push(CLOSE);
        }
        rest = end;
    }
    text.push_str(&source[rest..]);
    let mut contexts = Vec::with_capacity(tags.len());
    scan(&text, |_, _, ctx| contexts.push(ctx));
    tags.into_iter().zip(contexts).map(|((range, _), ctx)| (range, ctx)).collect()
}

/// One level of nesting in the quoting model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Top level or inside `$( )`: the count of open plain parentheses.
    Code {
        parens: u32,
    },
    Double,
    Backtick,
}

/// A here-document announced by `<<` whose body starts at the next newline.
struct Heredoc {
    delimiter: String,
    quoted: bool,
    strip_tabs: bool,
}

/// Walk a script, calling `hole(start, end, context)` for each hole in order.
fn scan(s: &str, mut hole: impl FnMut(usize, usize, Context)) {
    let b = s.as_bytes();
    let mut stack = vec![Frame::Code { parens: 0 }];
    let mut pending: Vec<Heredoc> = Vec::new();
    let mut i = 0;
    // The end of a hole starting at `at`.
    let hole_end = |at: usize| s[at..].find(CLOSE).map_or(s.len(), |c| at + c + CLOSE.len_utf8());
    let open = OPEN.to_string();
    let open = open.as_bytes();
    while i < b.len() {
        if b[i..].starts_with(open) {
            let end = hole_end(i);
            let ctx = match stack.last() {
                Some(Frame::Double) => Context::Quoted,
                _ => Context::Unquoted,
            };
            hole(i, end, ctx);
            i = end;
            continue;
        }
        let top = *stack.last().unwrap_or(&Frame::Code { parens: 0 });
        let c = b[i];
        match top {
            Frame::Double => match c {
                b'\\' if !b[i + 1..].starts_with(open) => i += 1,
                b'"' => {
                    stack.pop();
                }
                b'`' => stack.push(Frame::Backtick),
                b'$' if b.get(i + 1) == Some(&b'(') => {
                    stack.push(Frame::Code { parens: 0 });
                    i += 1;
                }
                _ => {}
            },
            Frame::Code { .. } | Frame::Backtick => match c {
                b'\\' if !b[i + 1..].starts_with(open) => i += 1,
                b'\'' => {
                    let close = s[i + 1..].find('\'').map_or(s.len(), |c| i + 1 + c);
                    let mut j = i + 1;
                    while let Some(o) = s[j..close].find(OPEN).map(|o| j + o) {
                        let end = hole_end(o);
                        hole(o, end, Context::SingleQuoted);
                        j = end;
                    }
                    i = close;
                }
                b'"' => stack.push(Frame::Double),
                b'`' if top == Frame::Backtick => {
                    stack.pop();
                }
                b'`' => stack.push(Frame::Backtick),
                b'$' if b.get(i + 1) == Some(&b'(') => {
                    stack.push(Frame::Code { parens: 0 });
                    i += 1;
                }
                b'(' => {
                    if let Some(Frame::Code { parens }) = stack.last_mut() {
                        *parens += 1;
                    }
                }
                b')' => {
                    let depth = stack.len();
                    match stack.last_mut() {
                        Some(Frame::Code { parens }) if *parens > 0 => *parens -= 1,
                        Some(Frame::Code { .. }) if depth > 1 => {
                            stack.pop();
                        }
                        _ => {}
                    }
                }
                b'#' if i == 0 || b" \t\n;&|(".contains(&b[i - 1]) => {
                    let end = s[i..].find('\n').map_or(s.len(), |n| i + n);
                    let mut j = i;
                    while let Some(o) = s[j..end].find(OPEN).map(|o| j + o) {
                        let e = hole_end(o);
                        hole(o, e, Context::Comment);
                        j = e;
                    }
                    // The newline itself is handled next (here-documents).
                    i = end;
                    continue;
                }
                // `<<<` (a here-string in bash) is not a here-document.
                b'<' if b[i..].starts_with(b"<<<") => {
                    i += 3;
                    continue;
                }
                b'<' if b.get(i + 1) == Some(&b'<') => {
                    i += 2;
                    let strip_tabs = b.get(i) == Some(&b'-');
                    if strip_tabs {
                        i += 1;
                    }
                    while b.get(i).is_some_and(|c| *c == b' ' || *c == b'\t') {
                        i += 1;
                    }
                    let (delimiter, quoted, next) = heredoc_word(s, i);
                    if !delimiter.is_empty() {
                        pending.push(Heredoc { delimiter, quoted, strip_tabs });
                    }
                    i = next;
                    continue;
                }
                b'\n' if !pending.is_empty() => {
                    i = bodies(s, i + 1, std::mem::take(&mut pending), &mut hole);
                    continue;
                }
                _ => {}
            },
        }
        i += 1;
    }
}

/// The delimiter word after `<<` at `i`: its unquoted text, whether any part
/// was quoted, and where it ends.
fn heredoc_word(s: &str, mut i: usize) -> (String, bool, usize) {
    let b = s.as_bytes();
    let mut word = String::new();
    let mut quoted = false;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                quoted = true;
                let close = s[i + 1..].find(q as char).map_or(s.len(), |c| i + 1 + c);
                word.push_str(&s[i + 1..close]);
                i = close + 1;
            }
            b'\\' => {
                quoted = true;
                if let Some(c) = s[i + 1..].chars().next() {
                    word.push(c);
                    i += 1 + c.len_utf8();
                } else {
                    i += 1;
                }
            }
            c if c.is_ascii_whitespace() || b";&|<>()".contains(&c) => break,
            _ => {
                let c = s[i..].chars().next().unwrap_or(' ');
                word.push(c);
                i += c.len_utf8();
            }
        }
    }
    (word, quoted, i.min(s.len()))
}

/// Read the bodies of `docs` starting at `i` (the line after their `<<`);
/// returns where the code resumes.
fn bodies(s: &str, mut i: usize, docs: Vec<Heredoc>, hole: &mut impl FnMut(usize, usize, Context)) -> usize {
    for doc in docs {
        let ctx = if doc.quoted { Context::QuotedHeredoc } else { Context::Quoted };
        while i < s.len() {
            let end = s[i..].find('\n').map_or(s.len(), |n| i + n);
            let line = &s[i..end];
            let line = if doc.strip_tabs { line.trim_start_matches('\t') } else { line };
            if line == doc.delimiter {
                i = (end + 1).min(s.len());
                break;
            }
            let mut j = i;
            while let Some(o) = s[j..end].find(OPEN).map(|o| j + o) {
                let e = s[o..].find(CLOSE).map_or(s.len(), |c| o + c + CLOSE.len_utf8());
                hole(o, e, ctx);
                j = e;
            }
            i = (end + 1).min(s.len());
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A script with `@` standing for a hole holding `v1`, `v2`, ….
    fn rendered(script: &str) -> String {
        let mut n = 0;
        script
            .chars()
            .map(|c| {
                if c == '@' {
                    n += 1;
                    hole(&format!("v{n}"))
                } else {
                    c.to_string()
                }
            })
            .collect()
    }

    fn bound(script: &str) -> Result<String, BindError> {
        bind(&rendered(script)).map(|b| b.script)
    }

    #[test]
    fn holes_become_references_quoted_for_their_place() {
        assert_eq!(bound("echo @").unwrap(), r#"echo "${TW_1}""#);
        assert_eq!(bound(r#"echo "Hello, @!""#).unwrap(), r#"echo "Hello, ${TW_1}!""#);
        assert_eq!(bound("echo $(cat @) \"$(basename @)\"").unwrap(), r#"echo $(cat "${TW_1}") "$(basename "${TW_2}")""#);
        assert_eq!(bound("echo `cat @`").unwrap(), r#"echo `cat "${TW_1}"`"#);
        assert_eq!(bound("echo \"a $(echo \"@\") b\" @").unwrap(), r#"echo "a $(echo "${TW_1}") b" "${TW_2}""#);
        assert_eq!(bound("f() { echo @; }; (cd x && echo @)").unwrap(), r#"f() { echo "${TW_1}"; }; (cd x && echo "${TW_2}")"#);
        assert_eq!(bound("echo \\\"@").unwrap(), r#"echo \""${TW_1}""#);
        assert_eq!(bound("# note @\necho @").unwrap(), "# note ${TW_1}\necho \"${TW_2}\"");
        let b = bind(&rendered("echo @ @")).unwrap();
        assert_eq!(b.vars, vec![("TW_1".to_string(), "v1".to_string()), ("TW_2".to_string(), "v2".to_string())]);
    }

    #[test]
    fn here_documents_expand_unless_their_delimiter_is_quoted() {
        assert_eq!(bound("cat <<EOF\nhi @\nEOF\necho @").unwrap(), "cat <<EOF\nhi ${TW_1}\nEOF\necho \"${TW_2}\"");
        assert_eq!(bound("cat <<-EOF >x\n\thi @\n\tEOF\n").unwrap(), "cat <<-EOF >x\n\thi ${TW_1}\n\tEOF\n");
        assert!(bound("cat <<'EOF'\nhi @\nEOF\n").is_err());
        assert!(bound("cat <<\\EOF\nhi @\nEOF\n").is_err());
        // `<<<` is not a here-document.
        assert_eq!(bound("cat <<< @").unwrap(), r#"cat <<< "${TW_1}""#);
    }

    #[test]
    fn single_quotes_are_refused() {
        assert!(bound("echo '@'").is_err());
        assert!(bound("echo 'it is @ here'").is_err());
        assert!(bound("echo \"'\"@").is_ok(), "a quote inside double quotes is a plain character");
        let e = bound("sh -c 'echo @'").unwrap_err();
        assert!(e.to_string().contains("single quotes"), "{e}");
    }

    #[test]
    fn values_round_trip_whatever_they_hold() {
        for v in ["", "plain", "a b", "$(id)", "`id`", "'; rm -rf / #", "\"\\$HOME\n", "\u{E000}x\u{E001}", "ünïcødé ✓"] {
            let b = bind(&format!("echo {}", hole(v))).unwrap();
            assert_eq!(b.vars, vec![("TW_1".to_string(), v.to_string())]);
            assert_eq!(b.script, "echo \"${TW_1}\"");
        }
    }

    #[test]
    fn source_holes_have_positions_and_contexts() {
        let src = "echo '{{input.a}}' \"{{input.b}}\" {{#if input.c}}{{input.c}}{{/if}} {{! note }}";
        let holes = holes_in_source(src);
        let got: Vec<(&str, Context)> = holes.iter().map(|(r, c)| (&src[r.clone()], *c)).collect();
        assert_eq!(got, vec![("{{input.a}}", Context::SingleQuoted), ("{{input.b}}", Context::Quoted), ("{{input.c}}", Context::Unquoted)]);
    }
}
