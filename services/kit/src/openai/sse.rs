//! `SseDecoder`: turns the bytes of a `text/event-stream` body into events, however the
//! bytes are split across network reads. Only `data` fields matter to chat completions;
//! comments (`: keep-alive`) and other fields are skipped.

/// One dispatched event: its `data` lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub data: String,
}

impl SseEvent {
    /// `data: [DONE]`, the end of an OpenAI stream.
    pub fn is_done(&self) -> bool {
        self.data.trim() == "[DONE]"
    }
}

/// Longest line kept while waiting for its end; longer is a malformed stream.
pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of the line not yet ended.
    pending: Vec<u8>,
    /// `data` lines of the event being read.
    data_lines: Vec<String>,
    /// The previous byte was `\r`, so a `\n` right after it ends nothing more.
    after_carriage_return: bool,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes; returns the events they complete, in order. Errs when one line
    /// grows past [`MAX_LINE_BYTES`].
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        let mut events = Vec::new();
        for &byte in bytes {
            let skip_line_feed = self.after_carriage_return && byte == b'\n';
            self.after_carriage_return = byte == b'\r';
            if skip_line_feed {
                continue;
            }
            if byte == b'\n' || byte == b'\r' {
                let line = std::mem::take(&mut self.pending);
                if let Some(event) = self.end_line(&line) {
                    events.push(event);
                }
                continue;
            }
            if self.pending.len() >= MAX_LINE_BYTES {
                return Err(format!(
                    "an event-stream line is over {MAX_LINE_BYTES} bytes"
                ));
            }
            self.pending.push(byte);
        }
        Ok(events)
    }

    /// Whether a partly read event or line is left over (the stream ended mid-event).
    pub fn has_partial_event(&self) -> bool {
        !self.pending.is_empty() || !self.data_lines.is_empty()
    }

    fn end_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            if self.data_lines.is_empty() {
                return None;
            }
            let data = std::mem::take(&mut self.data_lines).join("\n");
            return Some(SseEvent { data });
        }
        let text = String::from_utf8_lossy(line);
        if text.starts_with(':') {
            return None;
        }
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        if field == "data" {
            self.data_lines.push(value.to_string());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_events(decoder: &mut SseDecoder, pieces: &[&[u8]]) -> Vec<String> {
        pieces
            .iter()
            .flat_map(|piece| decoder.feed(piece).unwrap())
            .map(|event| event.data)
            .collect()
    }

    #[test]
    fn events_survive_any_split_and_any_line_ending() {
        let body = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: line one\ndata: line two\n\ndata:[DONE]\r\r";
        for split in 0..body.len() {
            let mut decoder = SseDecoder::new();
            let (head, tail) = body.split_at(split);
            let events = all_events(&mut decoder, &[head, tail]);
            assert_eq!(
                events,
                ["{\"a\":1}", "line one\nline two", "[DONE]"],
                "split at {split}"
            );
            assert!(!decoder.has_partial_event());
        }
        let mut decoder = SseDecoder::new();
        let byte_by_byte: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(all_events(&mut decoder, &byte_by_byte).len(), 3);
    }

    #[test]
    fn a_cut_off_event_is_reported_as_partial_and_long_lines_are_refused() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.feed(b"data: {\"half\"").unwrap().is_empty());
        assert!(decoder.has_partial_event());
        let mut decoder = SseDecoder::new();
        let long = vec![b'x'; MAX_LINE_BYTES + 1];
        assert!(decoder.feed(&long).is_err());
        assert!(SseEvent {
            data: " [DONE] ".to_string()
        }
        .is_done());
    }
}
