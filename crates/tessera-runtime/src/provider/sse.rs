//! An incremental Server-Sent-Events parser: feed it the byte chunks of a response body as they
//! arrive, get back complete events.
//!
//! Follows the WHATWG `text/event-stream` rules: lines end with `\n`, `\r\n` or `\r`; `data:`
//! lines of one event are joined with `\n`; one space after the colon is dropped; lines starting
//! with `:` are comments; a blank line dispatches the event. `event:` is kept; `id:` and `retry:`
//! are ignored (a model stream is never resumed). Bytes are only decoded once a whole line is
//! buffered, so chunk boundaries may fall anywhere, even inside a UTF-8 character. Invalid
//! UTF-8 is replaced rather than rejected, as the standard asks.

/// The default bound on one event (its data plus the line being read): 1 MiB.
pub(crate) const DEFAULT_MAX_EVENT_SIZE: usize = 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, when the event had one.
    pub(crate) event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub(crate) data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SseError {
    #[error("a server-sent event exceeds {limit} bytes")]
    EventTooLarge { limit: usize },
}

/// The parser state between chunks.
#[derive(Debug)]
pub(crate) struct SseParser {
    /// Bytes of the line being read (no terminator yet).
    line: Vec<u8>,
    /// The event's data so far; every `data:` line appended with a trailing `\n`.
    data: String,
    /// Whether a `data:` field was seen (an event with `data:` and an empty value still counts).
    has_data: bool,
    event: Option<String>,
    /// The last chunk ended with `\r`: a `\n` opening the next chunk belongs to that terminator.
    pending_cr: bool,
    max_event_size: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_SIZE)
    }
}

impl SseParser {
    pub(crate) fn new(max_event_size: usize) -> Self {
        Self {
            line: Vec::new(),
            data: String::new(),
            has_data: false,
            event: None,
            pending_cr: false,
            max_event_size,
        }
    }

    /// Consumes one chunk and appends the events it completes to `out`.
    pub(crate) fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut rest = chunk;
        if rest.is_empty() {
            return Ok(());
        }
        if self.pending_cr {
            self.pending_cr = false;
            if let Some((b'\n', tail)) = rest.split_first() {
                rest = tail;
            }
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (content, terminator_and_tail) = rest.split_at(pos);
            let mut tail = terminator_and_tail.get(1..).unwrap_or_default();
            if terminator_and_tail.first() == Some(&b'\r') {
                match tail.split_first() {
                    Some((b'\n', after)) => tail = after,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            self.line.extend_from_slice(content);
            self.check_size()?;
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out)?;
            self.line = line;
            self.line.clear();
            rest = tail;
        }
        self.line.extend_from_slice(rest);
        self.check_size()
    }

    /// Ends the stream. The standard discards an event that was not followed by a blank line;
    /// servers that forget the final blank line are common enough that it is dispatched instead.
    pub(crate) fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut out)?;
        }
        self.pending_cr = false;
        self.process_line(b"", &mut out)?;
        Ok(out.pop())
    }

    fn check_size(&self) -> Result<(), SseError> {
        if self.line.len() + self.data.len() > self.max_event_size {
            Err(SseError::EventTooLarge {
                limit: self.max_event_size,
            })
        } else {
            Ok(())
        }
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_data {
                let mut data = std::mem::take(&mut self.data);
                if data.ends_with('\n') {
                    data.pop();
                }
                out.push(SseEvent {
                    event: self.event.take(),
                    data,
                });
            }
            self.data.clear();
            self.has_data = false;
            self.event = None;
            return Ok(());
        }
        if line.first() == Some(&b':') {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = line.get(colon + 1..).unwrap_or_default();
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (line.get(..colon).unwrap_or_default(), value)
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
                self.has_data = true;
                if self.data.len() > self.max_event_size {
                    return Err(SseError::EventTooLarge {
                        limit: self.max_event_size,
                    });
                }
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            // `id`, `retry` and unknown fields: nothing to do for a model stream.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk, &mut out)?;
        }
        out.extend(parser.finish()?);
        Ok(out)
    }

    fn data_of(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.to_owned(),
        }
    }

    #[test]
    fn parses_events_with_every_line_ending() {
        for input in [
            "data: a\n\ndata: b\n\n",
            "data: a\r\n\r\ndata: b\r\n\r\n",
            "data: a\r\rdata: b\r\r",
            "data: a\r\n\ndata: b\n\r\n",
        ] {
            let events = parse_chunks(&[input.as_bytes()]).unwrap();
            assert_eq!(data_of(&events), ["a", "b"], "input {input:?}");
        }
    }

    #[test]
    fn joins_multi_line_data_and_strips_one_space() {
        let events = parse_chunks(&[b"data:first\ndata:  second\ndata\ndata: \n\n"]).unwrap();
        assert_eq!(data_of(&events), ["first\n second\n\n"]);
    }

    #[test]
    fn ignores_comments_ids_retry_and_unknown_fields_and_keeps_event_names() {
        let input =
            b": keep-alive\nid: 7\nretry: 100\nfoo: bar\nevent: error\ndata: x\n\n:\n\ndata: y\n\n";
        let events = parse_chunks(&[input]).unwrap();
        assert_eq!(
            events,
            [
                SseEvent {
                    event: Some("error".to_owned()),
                    data: "x".to_owned()
                },
                ev("y")
            ]
        );
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let events = parse_chunks(&[b"event: ping\n\nid: 3\n\n\n\ndata: z\n\n"]).unwrap();
        assert_eq!(events, [ev("z")]);
    }

    #[test]
    fn an_empty_data_field_dispatches_an_empty_event() {
        let events = parse_chunks(&[b"data\n\ndata:\n\n"]).unwrap();
        assert_eq!(data_of(&events), ["", ""]);
    }

    #[test]
    fn the_last_event_is_dispatched_at_end_of_stream_without_a_blank_line() {
        assert_eq!(
            parse_chunks(&[b"data: a\n\ndata: b"]).unwrap(),
            [ev("a"), ev("b")]
        );
        assert_eq!(
            parse_chunks(&[b"data: a\n\ndata: b\n"]).unwrap(),
            [ev("a"), ev("b")]
        );
        assert_eq!(parse_chunks(&[b"data: a\r"]).unwrap(), [ev("a")]);
    }

    #[test]
    fn a_utf8_character_split_across_chunks_survives() {
        let input = "data: h\u{e9}llo \u{1f600}\n\n".as_bytes();
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            let events = parse_chunks(&[a, b]).unwrap();
            assert_eq!(data_of(&events), ["h\u{e9}llo \u{1f600}"], "cut at {cut}");
        }
    }

    #[test]
    fn crlf_split_between_chunks_is_one_terminator() {
        let events = parse_chunks(&[b"data: a\r", b"\n", b"\r", b"\ndata: b\r", b"\r"]).unwrap();
        assert_eq!(data_of(&events), ["a", "b"]);
        let events = parse_chunks(&[b"data: a\r", b"", b"\n\r\n"]).unwrap();
        assert_eq!(data_of(&events), ["a"]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let events = parse_chunks(&[b"data: a\xffb\n\n"]).unwrap();
        assert_eq!(data_of(&events), ["a\u{fffd}b"]);
    }

    #[test]
    fn an_oversized_event_is_an_error() {
        let mut parser = SseParser::new(16);
        let mut out = Vec::new();
        parser.push(b"data: 0123456789\n", &mut out).unwrap();
        assert_eq!(
            parser.push(b"data: 0123456789\n", &mut out),
            Err(SseError::EventTooLarge { limit: 16 })
        );

        // A single endless line without a terminator is caught too.
        let mut parser = SseParser::new(16);
        assert!(parser.push(&[b'x'; 10], &mut out).is_ok());
        assert!(parser.push(&[b'x'; 10], &mut out).is_err());

        // Many events, each under the limit, are fine.
        let mut parser = SseParser::new(16);
        for _ in 0..100 {
            parser.push(b"data: 0123456789\n\n", &mut out).unwrap();
        }
        assert_eq!(out.len(), 100);
    }

    /// A small deterministic generator so the split test needs no dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Property: however a stream is cut into chunks, the parser yields the same events as when
    /// it is fed in one piece. Streams are generated from random fields, values (with multi-byte
    /// characters), comments and line endings.
    #[test]
    fn chunking_never_changes_the_events() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let endings = ["\n", "\r\n", "\r"];
        let values = [
            "",
            "x",
            " spaced",
            "{\"a\":1}",
            "h\u{e9}",
            "\u{1f600}\u{1f600}",
            "a:b",
        ];
        let fields = [
            "data", "data", "data", "event", "id", "retry", ":comment", "other",
        ];
        for _ in 0..400 {
            let mut stream = String::new();
            for _ in 0..rng.below(12) {
                for _ in 0..rng.below(4) {
                    let field = fields[rng.below(fields.len())];
                    let sep = if rng.below(2) == 0 { ":" } else { ": " };
                    stream.push_str(field);
                    stream.push_str(sep);
                    stream.push_str(values[rng.below(values.len())]);
                    stream.push_str(endings[rng.below(endings.len())]);
                }
                stream.push_str(endings[rng.below(endings.len())]);
            }
            let bytes = stream.as_bytes();
            let whole = parse_chunks(&[bytes]).unwrap();

            // Every single cut point.
            for cut in 0..=bytes.len() {
                let (a, b) = bytes.split_at(cut);
                assert_eq!(
                    parse_chunks(&[a, b]).unwrap(),
                    whole,
                    "{stream:?} cut at {cut}"
                );
            }
            // Random multi-way cuts, including one byte at a time.
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(
                parse_chunks(&singles).unwrap(),
                whole,
                "{stream:?} bytewise"
            );
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                let (a, b) = rest.split_at(rng.below(rest.len() + 1).max(1).min(rest.len()));
                chunks.push(a);
                rest = b;
            }
            assert_eq!(
                parse_chunks(&chunks).unwrap(),
                whole,
                "{stream:?} random cuts"
            );
        }
    }
}
