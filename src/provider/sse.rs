//! An incremental parser for server-sent events (the `text/event-stream` format).
//!
//! Bytes arrive in arbitrary pieces; events come out the same however the bytes were
//! split. Lines end with `\n`, `\r\n` or `\r` (also when the `\r` and `\n` arrive in
//! different pieces); lines starting with `:` are comments (keep-alives); an event is
//! dispatched at a blank line.

/// Turns the data of a stream's events into an answer: one per wire format.
pub trait Decoder {
    /// Takes one event's data; returns the text delta it carried (often empty).
    fn decode(&mut self, data: &str) -> Result<String, super::ProviderError>;
    /// The stream's terminal event was seen: nothing more needs reading.
    fn is_done(&self) -> bool;
}

/// Feeds a whole stream, cut into pieces, to a decoder; returns the text deltas.
#[cfg(test)]
pub fn decode_all(pieces: &[&[u8]], decoder: &mut impl Decoder) -> Vec<String> {
    let mut parser = SseParser::new();
    let mut events: Vec<SseEvent> = pieces.iter().flat_map(|p| parser.push(p)).collect();
    events.extend(parser.finish());
    events
        .iter()
        .map(|e| decoder.decode(&e.data).expect("a valid event"))
        .filter(|delta| !delta.is_empty())
        .collect()
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous piece ended with `\r`: a `\n` starting the next one is part of it.
    after_cr: bool,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(&mut events),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut events);
                }
                _ => self.line.push(b),
            }
        }
        events
    }

    /// The stream ended: an event still waiting for its blank line is dispatched
    /// (servers that close without the final blank line are common).
    pub fn finish(&mut self) -> Option<SseEvent> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut events);
        }
        self.end_line(&mut events);
        events.pop()
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if !self.data.is_empty() {
                events.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data).join("\n"),
                });
            }
            self.event = None;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => self.data.push(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            _ => {} // `id`, `retry` and unknown fields mean nothing to a model stream.
        }
    }
}

/// Cuts `bytes` at the given points (any order, any place), for the property tests
/// that every split of a stream gives the same result.
#[cfg(test)]
pub fn split_at<'a>(bytes: &'a [u8], cuts: &[proptest::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for p in points {
        pieces.push(&bytes[start..p]);
        start = p;
    }
    pieces.push(&bytes[start..]);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events: Vec<SseEvent> = pieces.iter().flat_map(|p| parser.push(p)).collect();
        events.extend(parser.finish());
        events
    }

    fn data(text: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: text.into(),
        }
    }

    #[test]
    fn events_end_at_blank_lines_and_comments_are_skipped() {
        let events =
            parse_all(&[b": keep-alive\n\ndata: {\"a\":1}\n\nevent: ping\ndata: x\ndata: y\n\n"]);
        assert_eq!(
            events,
            vec![
                data("{\"a\":1}"),
                SseEvent {
                    event: Some("ping".into()),
                    data: "x\ny".into()
                }
            ]
        );
    }

    #[test]
    fn crlf_and_cr_line_endings_work_even_when_split() {
        assert_eq!(
            parse_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\r"]),
            vec![data("a"), data("b")]
        );
    }

    #[test]
    fn an_event_without_its_final_blank_line_is_kept_at_the_end() {
        assert_eq!(parse_all(&[b"data: [DONE]"]), vec![data("[DONE]")]);
        assert_eq!(parse_all(&[b"data: last\n"]), vec![data("last")]);
    }

    #[test]
    fn the_space_after_the_colon_is_optional() {
        assert_eq!(
            parse_all(&[b"data:x\n\ndata:  y\n\n"]),
            vec![data("x"), data(" y")]
        );
    }

    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            "data: [a-z{}\":,é ]{0,20}".prop_map(|s| s.into_bytes()),
            Just(b": keep-alive".to_vec()),
            "event: [a-z_]{1,10}".prop_map(|s| s.into_bytes()),
            Just(Vec::new()),
        ];
        let ending = prop_oneof![
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec())
        ];
        proptest::collection::vec((line, ending), 0..30).prop_map(|lines| {
            lines
                .into_iter()
                .flat_map(|(l, e)| l.into_iter().chain(e))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn any_split_of_the_bytes_gives_the_same_events(
            bytes in stream(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let whole = parse_all(&[&bytes]);
            let pieces = super::split_at(&bytes, &cuts);
            prop_assert_eq!(parse_all(&pieces), whole);
        }
    }
}
