//! W3C trace context (`traceparent`, `tracestate`), carried by HTTP requests and by
//! event envelopes so one trace follows a request across services and the bus.

use std::fmt;
use std::str::FromStr;

use crate::error::DecodeError;

/// A parsed `traceparent` (version 00) plus the optional `tracestate`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    state: Option<String>,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

impl TraceContext {
    /// A new trace (sampled), as a request with no incoming context starts.
    pub fn new_root() -> Self {
        let trace_id = *uuid::Uuid::new_v4().as_bytes();
        Self { trace_id, span_id: random_span_id(), flags: 1, state: None }
    }

    /// The same trace with a new span id: the context an outgoing call carries.
    pub fn child(&self) -> Self {
        Self { span_id: random_span_id(), ..self.clone() }
    }

    /// Parses a `traceparent` header value.
    pub fn parse(traceparent: &str) -> Result<Self, DecodeError> {
        let bad =
            |why: &str| DecodeError::invalid("traceparent", format!("`{traceparent}`: {why}"));
        let mut parts = traceparent.trim().split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected version-traceid-parentid-flags"));
        };
        if version.len() != 2 || version == "ff" {
            return Err(bad("invalid version"));
        }
        if version == "00" && parts.next().is_some() {
            return Err(bad("version 00 has exactly four fields"));
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flag = [0u8; 1];
        decode_hex(trace, &mut trace_id)
            .ok_or_else(|| bad("trace id is not 32 lower-case hex digits"))?;
        decode_hex(span, &mut span_id)
            .ok_or_else(|| bad("parent id is not 16 lower-case hex digits"))?;
        decode_hex(flags, &mut flag).ok_or_else(|| bad("flags are not 2 hex digits"))?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return Err(bad("an all-zero id is invalid"));
        }
        Ok(Self { trace_id, span_id, flags: flag[0], state: None })
    }

    /// Attaches a `tracestate` value.
    #[must_use]
    pub fn with_state(mut self, state: Option<String>) -> Self {
        self.state = state.filter(|s| !s.is_empty());
        self
    }

    pub fn trace_id(&self) -> String {
        encode_hex(&self.trace_id)
    }

    /// The trace id as its 16 bytes (what [`TraceContext::trace_id`] spells in hex).
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn span_id(&self) -> String {
        encode_hex(&self.span_id)
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id(), self.span_id(), self.flags)
    }
}

impl FromStr for TraceContext {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

fn random_span_id() -> [u8; 8] {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[..8]);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2
        || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(())
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_the_spec_example() -> Result<(), DecodeError> {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(tp)?;
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id(), "00f067aa0ba902b7");
        assert!(ctx.sampled());
        assert_eq!(ctx.traceparent(), tp);
        let child = ctx.child();
        assert_eq!(child.trace_id(), ctx.trace_id());
        assert_ne!(child.span_id(), ctx.span_id());
        Ok(())
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad).is_err(), "{bad}");
        }
        assert!(TraceContext::new_root().sampled());
    }
}
