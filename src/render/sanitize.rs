//! Text from models, tools and files is untrusted: shown raw, an escape sequence could
//! move the cursor, retitle the terminal, plant a hyperlink or ring the bell. Every
//! rendering but `--json` passes such text through [`sanitize`].

use std::borrow::Cow;

/// Replaces control characters (except newline and tab) with visible stand-ins:
/// C0 controls and DEL by their Unicode control pictures (ESC shows as `␛`), C1
/// controls (which some terminals also obey) by `�`.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                c if !is_unsafe(c) => c,
                '\u{7f}' => '\u{2421}',
                c if (c as u32) < 0x20 => char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'),
                _ => '\u{fffd}',
            })
            .collect(),
    )
}

fn is_unsafe(c: char) -> bool {
    c != '\n' && c != '\t' && (c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_lose_their_power() {
        let hostile = "ok\x1b[2J\x1b]0;pwned\x07\x1b]8;;http://x\x1b\\link\r\u{9b}31m\x7f";
        let shown = sanitize(hostile);
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{shown}"
        );
        assert_eq!(shown, "ok␛[2J␛]0;pwned␇␛]8;;http://x␛\\link␍�31m␡");
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let text = "Hello, wörld!\n\tindented 🎉";
        assert!(matches!(sanitize(text), Cow::Borrowed(_)));
    }
}
