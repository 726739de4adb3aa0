//! Neutralising untrusted text before it reaches a terminal.
//!
//! Text from models, tools, providers and files is untrusted. Shown raw, an escape
//! sequence could move the cursor, retitle the terminal, write the clipboard (OSC 52),
//! plant a hyperlink or ring the bell; a bidirectional override or an invisible
//! character could make a line read differently from what it holds (Trojan Source);
//! a newline in a title could forge a row of a table.
//!
//! Three tools, one rule ("nothing from outside reaches a terminal as it is"):
//! - [`sanitize`] for multi-line text (answers, tool output, messages): newlines and
//!   tabs stay, every other control or format character is shown by a visible stand-in;
//! - [`one_line`] for fields that must stay on their row (titles, names, todo items,
//!   error lines): newlines and tabs are shown too, and the text is capped, saying how
//!   much was left out;
//! - [`Neutral`], a writer that sanitises everything written through it, so a command
//!   whose output goes through it cannot forget a field. Only `--json` output, which
//!   must stay exact, and the renderers' own colour codes bypass it.

use std::borrow::Cow;
use std::io::{self, Write};

/// Neutralises multi-line text: newlines and tabs are kept, every other control or
/// format character is replaced by a visible stand-in (see [`stand_in`]).
pub fn sanitize(text: &str) -> Cow<'_, str> {
    neutralise(text, true)
}

/// Neutralises a single-line field and caps it at `cap` characters of the original:
/// newlines and tabs are shown as `␊` and `␉` like every other control character, so
/// the field keeps its row; a longer text ends with `…(N more bytes)`.
pub fn one_line(text: &str, cap: usize) -> Cow<'_, str> {
    let (kept, omitted) = match text.char_indices().nth(cap) {
        Some((end, _)) => (&text[..end], text.len() - end),
        None => (text, 0),
    };
    let shown = neutralise(kept, false);
    if omitted == 0 {
        return shown;
    }
    Cow::Owned(format!("{shown}…({omitted} more bytes)"))
}

fn neutralise(text: &str, multi_line: bool) -> Cow<'_, str> {
    let keeps = |c: char| multi_line && (c == '\n' || c == '\t');
    let mut chars = text.char_indices().peekable();
    let mut previous = None;
    // Allocated only at the first character that needs a stand-in.
    let mut shown: Option<String> = None;
    while let Some((at, c)) = chars.next() {
        let next = chars.peek().map(|&(_, next)| next);
        let safe = keeps(c) || !is_unsafe(c) || joins_emoji(previous, c, next);
        previous = Some(c);
        match (&mut shown, safe) {
            (None, true) => {}
            (None, false) => {
                let mut s = String::with_capacity(text.len() + 16);
                s.push_str(&text[..at]);
                push_stand_in(&mut s, c);
                shown = Some(s);
            }
            (Some(s), true) => s.push(c),
            (Some(s), false) => push_stand_in(s, c),
        }
    }
    match shown {
        Some(s) => Cow::Owned(s),
        None => Cow::Borrowed(text),
    }
}

/// A character that must not reach a terminal as it is: a control character (C0, DEL,
/// C1), a format character (Unicode category Cf: bidirectional embeddings, overrides
/// and isolates, marks, zero-width characters, the byte order mark, interlinear
/// annotations, tag characters), or a line or paragraph separator.
fn is_unsafe(c: char) -> bool {
    c.is_control() || is_format(c) || c == '\u{2028}' || c == '\u{2029}'
}

/// Unicode category Cf (Unicode 15.1), written out: the standard library has no table.
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{890}'..='\u{891}'
            | '\u{8e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

/// A zero-width joiner between two emoji (`👩‍💻`, `👨‍👩‍👧`) only asks for one combined
/// picture; it cannot reorder or hide text, so it is kept and the sequence stays
/// readable. Anywhere else it is shown like any other format character.
fn joins_emoji(previous: Option<char>, c: char, next: Option<char>) -> bool {
    c == '\u{200d}'
        && previous.is_some_and(|p| is_emoji(p) || p == '\u{fe0f}')
        && next.is_some_and(is_emoji)
}

fn is_emoji(c: char) -> bool {
    matches!(c, '\u{2600}'..='\u{27bf}' | '\u{2b00}'..='\u{2bff}' | '\u{1f000}'..='\u{1faff}')
}

/// The visible stand-in of an unsafe character: C0 controls and DEL by their Unicode
/// control pictures (ESC shows as `␛`, a newline in a one-line field as `␊`), C1
/// controls (which some terminals also obey) by `�`, format characters and separators
/// by their code point (`<U+202E>`), so a reader sees that something was there.
fn push_stand_in(out: &mut String, c: char) {
    match c {
        '\u{7f}' => out.push('\u{2421}'),
        c if (c as u32) < 0x20 => out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}')),
        c if c.is_control() => out.push('\u{fffd}'),
        c => out.push_str(&format!("<U+{:04X}>", c as u32)),
    }
}

/// A writer that passes everything through [`sanitize`] on its way to `inner`. The
/// human-readable output of a command goes through one, so a field printed without
/// thought still cannot carry an escape sequence. Bytes that are not UTF-8 are shown
/// as `�`; a character split across two writes is put back together first.
pub struct Neutral<W: Write> {
    inner: W,
    /// The start of a character whose remaining bytes have not been written yet.
    partial: Vec<u8>,
}

impl<W: Write> Neutral<W> {
    pub fn new(inner: W) -> Self {
        Neutral {
            inner,
            partial: Vec::new(),
        }
    }
}

impl<W: Write> Write for Neutral<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let joined;
        let mut bytes = if self.partial.is_empty() {
            buf
        } else {
            self.partial.extend_from_slice(buf);
            joined = std::mem::take(&mut self.partial);
            &joined[..]
        };
        let mut shown = String::new();
        loop {
            match std::str::from_utf8(bytes) {
                Ok(text) => {
                    shown.push_str(&sanitize(text));
                    break;
                }
                Err(err) => {
                    let (valid, rest) = bytes.split_at(err.valid_up_to());
                    // Checked by from_utf8 just above.
                    shown.push_str(&sanitize(std::str::from_utf8(valid).unwrap_or_default()));
                    match err.error_len() {
                        Some(bad) => {
                            shown.push('\u{fffd}');
                            bytes = &rest[bad..];
                        }
                        None => {
                            self.partial = rest.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        self.inner.write_all(shown.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for Neutral<W> {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            // The text ended inside a character: show that something was cut.
            let _ = self.inner.write_all("\u{fffd}".as_bytes());
            let _ = self.inner.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_unsafe(text: &str) -> bool {
        text.chars()
            .any(|c| c != '\n' && c != '\t' && is_unsafe(c) && c != '\u{200d}')
    }

    #[test]
    fn escape_sequences_lose_their_power() {
        let hostile = "ok\x1b[2J\x1b]0;pwned\x07\x1b]8;;http://x\x1b\\link\r\u{9b}31m\x7f";
        let shown = sanitize(hostile);
        assert!(!has_unsafe(&shown), "{shown}");
        assert_eq!(shown, "ok␛[2J␛]0;pwned␇␛]8;;http://x␛\\link␍�31m␡");
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let text = "Hello, wörld!\n\tindented 🎉 ١٢٣ עברית";
        assert!(matches!(sanitize(text), Cow::Borrowed(_)));
        assert!(matches!(one_line("a title", 10), Cow::Borrowed(_)));
    }

    #[test]
    fn format_characters_are_shown_by_code_point() {
        let hostile =
            "a\u{202e}b\u{2066}c\u{2069}d\u{200b}e\u{2028}f\u{61c}g\u{feff}h\u{e0041}i\u{ad}j";
        assert_eq!(
            sanitize(hostile),
            "a<U+202E>b<U+2066>c<U+2069>d<U+200B>e<U+2028>f<U+061C>g<U+FEFF>h<U+E0041>i<U+00AD>j"
        );
        for c in ('\u{202a}'..='\u{202e}').chain('\u{2066}'..='\u{2069}') {
            assert!(!has_unsafe(&sanitize(&format!("x{c}y"))), "{c:?}");
        }
    }

    #[test]
    fn emoji_sequences_stay_readable_but_a_lone_joiner_is_shown() {
        assert_eq!(sanitize("👩‍💻 and ❤️‍🔥"), "👩‍💻 and ❤️‍🔥");
        assert_eq!(sanitize("a\u{200d}b"), "a<U+200D>b");
        assert_eq!(sanitize("👩\u{200d}"), "👩<U+200D>");
    }

    #[test]
    fn one_line_fields_keep_their_row_and_are_capped() {
        assert_eq!(one_line("a\nb\tc\r\n", 100), "a␊b␉c␍␊");
        let long = "x".repeat(100_000);
        assert_eq!(one_line(&long, 5), "xxxxx…(99995 more bytes)");
        assert_eq!(one_line("héllo", 2), "hé…(3 more bytes)");
        assert_eq!(one_line("abc", 3), "abc");
    }

    #[test]
    fn the_writer_neutralises_whatever_is_written_and_however_it_is_cut() {
        let mut out = Vec::new();
        {
            let mut w = Neutral::new(&mut out);
            let text = "é\x1b]52;c;aGk=\x07\u{202e}\n".as_bytes();
            // Byte by byte: characters split across writes are put back together.
            for b in text {
                w.write_all(&[*b]).unwrap();
            }
            w.write_all(b"bad \xff byte\n").unwrap();
            w.write_all(&"é".as_bytes()[..1]).unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "é␛]52;c;aGk=␇<U+202E>\nbad � byte\n�"
        );
    }
}
