//! W3C trace context (`traceparent`, `tracestate`), carried by HTTP requests and by
//! event envelopes so one trace follows a request across services and the bus.

use std::fmt;
use std::str::FromStr;

use crate::error::DecodeError;

/// Most list members a `tracestate` may have (W3C Trace Context, 3.3.1.1); a value
/// with more is invalid and dropped.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest `tracestate` Keel keeps: the 512 characters W3C asks every vendor to
/// propagate (3.3.1.5). A longer valid value is truncated as the spec says.
pub const MAX_TRACESTATE_LEN: usize = 512;
/// Members longer than this go first when a `tracestate` is truncated (3.3.1.5).
const LARGE_MEMBER: usize = 128;

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

    /// Attaches a `tracestate` value, as W3C Trace Context says a receiver takes one:
    /// an invalid value (bad syntax, a duplicate key, more than
    /// [`MAX_TRACESTATE_MEMBERS`] members) is dropped, a valid one kept in canonical
    /// form (no blanks around members, no empty members) and cut to at most
    /// [`MAX_TRACESTATE_LEN`] bytes by [`normalize_tracestate`]'s rules. Untrusted
    /// input never fails the request and never grows what is stored.
    #[must_use]
    pub fn with_state(mut self, state: Option<String>) -> Self {
        self.state = state.as_deref().and_then(normalize_tracestate);
        self
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        encode_hex(&self.trace_id)
    }

    /// The trace id as its 16 bytes (what [`TraceContext::trace_id`] spells in hex).
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The parent span id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        encode_hex(&self.span_id)
    }

    /// Whether the `sampled` flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `tracestate`, normalized, if any.
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

/// A `tracestate` value as Keel keeps it, or `None` when it is invalid or empty.
///
/// Validates each member against the W3C Trace Context grammar (3.3.1: keys of
/// lower-case letters, digits and `_-*/`, optionally `tenant@system`; values of
/// printable ASCII without `,` or `=`, not ending in a blank; unique keys; at most
/// [`MAX_TRACESTATE_MEMBERS`] members), rejoins the members with plain commas, and
/// truncates a longer result to [`MAX_TRACESTATE_LEN`] bytes as 3.3.1.5 says: members
/// over 128 bytes go first, then members from the end.
///
/// Written by hand: the grammar is a few lines, and keel-core takes no tracing or
/// OpenTelemetry dependency (OpenTelemetry's `TraceState` neither truncates nor
/// checks the member count).
pub fn normalize_tracestate(value: &str) -> Option<String> {
    let mut members: Vec<&str> = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, val) = member.split_once('=')?;
        if !valid_tracestate_key(key) || !valid_tracestate_value(val) {
            return None;
        }
        if members.iter().any(|m| m.split_once('=').is_some_and(|(k, _)| k == key)) {
            return None;
        }
        members.push(member);
        if members.len() > MAX_TRACESTATE_MEMBERS {
            return None;
        }
    }
    let size =
        |members: &[&str]| members.iter().map(|m| m.len() + 1).sum::<usize>().saturating_sub(1);
    while size(&members) > MAX_TRACESTATE_LEN {
        match members.iter().rposition(|m| m.len() > LARGE_MEMBER) {
            Some(large) => members.remove(large),
            None => members.pop()?,
        };
    }
    (!members.is_empty()).then(|| members.join(","))
}

fn valid_tracestate_key(key: &str) -> bool {
    fn rest(c: u8) -> bool {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/')
    }
    match key.split_once('@') {
        None => {
            let bytes = key.as_bytes();
            (1..=256).contains(&bytes.len())
                && bytes[0].is_ascii_lowercase()
                && bytes[1..].iter().all(|&c| rest(c))
        }
        Some((tenant, system)) => {
            let (tenant, system) = (tenant.as_bytes(), system.as_bytes());
            (1..=241).contains(&tenant.len())
                && (tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit())
                && tenant[1..].iter().all(|&c| rest(c))
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system[1..].iter().all(|&c| rest(c))
        }
    }
}

fn valid_tracestate_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    (1..=256).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&c| c == b' ' || ((0x21..=0x7e).contains(&c) && c != b',' && c != b'='))
        && bytes.last().is_some_and(|&c| c != b' ')
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

    fn parent() -> TraceContext {
        TraceContext::new_root()
    }

    #[test]
    fn an_oversize_tracestate_is_bounded_not_kept_whole() {
        // The report's case: a 307 KB value, one member.
        let huge = format!("vendor={}", "x".repeat(307 * 1024));
        assert_eq!(parent().with_state(Some(huge)).tracestate(), None);
        // 31 members of ~40 bytes: valid, but over 512 bytes: truncated from the end.
        let members: Vec<String> = (0..31).map(|n| format!("v{n:02}={}", "a".repeat(36))).collect();
        let state = parent().with_state(Some(members.join(","))).tracestate().map(str::to_owned);
        let state = state.expect("truncated, not dropped");
        assert!(state.len() <= MAX_TRACESTATE_LEN, "{} bytes", state.len());
        assert!(state.starts_with("v00="), "{state}");
        assert!(members.join(",").starts_with(&state), "whole members from the front");
    }

    #[test]
    fn truncation_drops_members_over_128_bytes_first() {
        let big = format!("big={}", "b".repeat(200));
        let small: Vec<String> = (0..8).map(|n| format!("s{n}={}", "c".repeat(40))).collect();
        let value = format!("{},{big},{}", small[..4].join(","), small[4..].join(","));
        let state = parent().with_state(Some(value)).tracestate().map(str::to_owned);
        assert_eq!(state.as_deref(), Some(small.join(",").as_str()));
    }

    #[test]
    fn an_invalid_tracestate_is_dropped() {
        let too_many: Vec<String> = (0..33).map(|n| format!("k{n}=v")).collect();
        for bad in [
            too_many.join(","),
            "Upper=1".to_owned(),
            "k=v,k=w".to_owned(),
            "k=".to_owned(),
            "k=has=equals".to_owned(),
            "k=a\tb".to_owned(),
            "novalue".to_owned(),
            "k=v\u{1}".to_owned(),
            format!("{}=v", "k".repeat(257)),
            format!("k={}", "v".repeat(257)),
        ] {
            assert_eq!(parent().with_state(Some(bad.clone())).tracestate(), None, "{bad:?}");
        }
    }

    #[test]
    fn a_valid_tracestate_is_kept_in_canonical_form() {
        for (given, kept) in [
            ("congo=t61rcWkgMzE", "congo=t61rcWkgMzE"),
            (
                "rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE",
                "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            ),
            ("tenant@sys=a b,,  ,k_-*/9=~", "tenant@sys=a b,k_-*/9=~"),
        ] {
            assert_eq!(parent().with_state(Some(given.to_owned())).tracestate(), Some(kept));
        }
        let members: Vec<String> = (0..32).map(|n| format!("k{n}=v")).collect();
        let all = members.join(",");
        assert_eq!(parent().with_state(Some(all.clone())).tracestate(), Some(all.as_str()));
        assert_eq!(parent().with_state(Some(" , ".to_owned())).tracestate(), None);
    }
}
