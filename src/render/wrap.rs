//! Word wrapping for streamed text: words are written as soon as they are complete
//! (the whitespace after them has arrived), wrapped to the width at that moment, so a
//! resized terminal is followed from the next line on.

use std::io::{self, Write};

use console::measure_text_width;

#[derive(Debug, Default)]
pub struct Wrap {
    /// Columns used on the current line (0: at the start of a line).
    column: usize,
    /// The word still arriving.
    partial: String,
    /// Whitespace seen after the last written word, not yet written.
    space: String,
}

impl Wrap {
    /// True while a line of text is open (something is written, or about to be).
    pub fn is_open(&self) -> bool {
        self.column > 0 || !self.partial.is_empty()
    }

    /// Takes streamed text; writes every word it completes.
    pub fn push(
        &mut self,
        out: &mut impl Write,
        text: &str,
        width: usize,
        indent: &str,
    ) -> io::Result<()> {
        for c in text.chars() {
            if c.is_whitespace() {
                if !self.partial.is_empty() {
                    let word = std::mem::take(&mut self.partial);
                    self.word(out, &word, width, indent)?;
                }
                if c == '\n' {
                    self.newline(out)?;
                } else {
                    self.space.push(c);
                }
            } else {
                self.partial.push(c);
            }
        }
        Ok(())
    }

    /// Writes what is left and ends the line.
    pub fn end(&mut self, out: &mut impl Write, width: usize, indent: &str) -> io::Result<()> {
        if !self.partial.is_empty() {
            let word = std::mem::take(&mut self.partial);
            self.word(out, &word, width, indent)?;
        }
        if self.column > 0 {
            self.newline(out)?;
        }
        self.space.clear();
        Ok(())
    }

    fn word(
        &mut self,
        out: &mut impl Write,
        word: &str,
        width: usize,
        indent: &str,
    ) -> io::Result<()> {
        let word_width = measure_text_width(word);
        let space = std::mem::take(&mut self.space);
        if self.column == 0 {
            write!(out, "{indent}{word}")?;
            self.column = measure_text_width(indent) + word_width;
        } else if self.column + space.len() + word_width > width.max(20) {
            write!(out, "\n{indent}{word}")?;
            self.column = measure_text_width(indent) + word_width;
        } else {
            write!(out, "{space}{word}")?;
            self.column += space.len() + word_width;
        }
        Ok(())
    }

    fn newline(&mut self, out: &mut impl Write) -> io::Result<()> {
        writeln!(out)?;
        self.column = 0;
        self.space.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(pieces: &[&str], width: usize) -> String {
        let mut out = Vec::new();
        let mut w = Wrap::default();
        for p in pieces {
            w.push(&mut out, p, width, "  ").unwrap();
        }
        w.end(&mut out, width, "  ").unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn words_wrap_at_the_width_however_the_text_is_split() {
        let text = "the quick brown fox jumps over the lazy dog again and again";
        let whole = wrap(&[text], 24);
        assert_eq!(
            whole,
            "  the quick brown fox\n  jumps over the lazy\n  dog again and again\n"
        );
        let pieces: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        assert_eq!(wrap(&refs, 24), whole);
    }

    #[test]
    fn newlines_in_the_text_are_kept() {
        assert_eq!(wrap(&["one\ntwo"], 40), "  one\n  two\n");
    }

    #[test]
    fn a_partial_word_waits_for_its_end() {
        let mut out = Vec::new();
        let mut w = Wrap::default();
        w.push(&mut out, "hel", 40, "").unwrap();
        assert!(out.is_empty());
        w.push(&mut out, "lo ", 40, "").unwrap();
        assert_eq!(out, b"hello");
    }
}
