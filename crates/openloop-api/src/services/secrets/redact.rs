//! Redaction: every value a run or a devbox was given becomes `[REDACTED:<name>]` in what it
//! produces (text, bytes, JSON, and streams cut at any byte).

use serde_json::Value;
use std::borrow::Cow;

/// Replaces secret values by `[REDACTED:<name>]` in text, bytes and JSON.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a value containing another is replaced whole.
    patterns: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes some pattern starts with.
    first: Vec<bool>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} patterns)", self.patterns.len())
    }
}

/// Lines of a multi-line value at least this long are redacted on their own too (output is
/// recorded line by line, so a multi-line value never appears whole in one record).
const MIN_LINE_PATTERN: usize = 8;

impl Redactor {
    /// From `(name, value)` pairs.
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut patterns: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (name, value) in secrets {
            let marker = format!("[REDACTED:{name}]").into_bytes();
            let mut add = |needle: &str| {
                if !needle.is_empty() && !patterns.iter().any(|(n, _)| n == needle.as_bytes()) {
                    patterns.push((needle.as_bytes().to_vec(), marker.clone()));
                }
            };
            add(value);
            if value.contains('\n') {
                for line in value.lines() {
                    let line = line.trim_end_matches('\r');
                    if line.trim().len() >= MIN_LINE_PATTERN {
                        add(line);
                    }
                }
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let mut first = vec![false; 256];
        for (p, _) in &patterns {
            first[p[0] as usize] = true;
        }
        Redactor { patterns, first }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Redact `data`. With `more`, more data follows: a tail that could be the start of a
    /// value is held back. Returns the output and how many input bytes it consumed.
    pub fn redact_partial(&self, data: &[u8], more: bool) -> (Vec<u8>, usize) {
        if self.patterns.is_empty() {
            return (data.to_vec(), data.len());
        }
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        'scan: while i < data.len() {
            let b = data[i];
            if self.first[b as usize] {
                let rest = &data[i..];
                if more
                    && self
                        .patterns
                        .iter()
                        .any(|(p, _)| rest.len() < p.len() && p.starts_with(rest))
                {
                    return (out, i);
                }
                for (p, marker) in &self.patterns {
                    if rest.starts_with(p) {
                        out.extend_from_slice(marker);
                        i += p.len();
                        continue 'scan;
                    }
                }
            }
            out.push(b);
            i += 1;
        }
        (out, data.len())
    }

    pub fn redact_bytes(&self, data: &[u8]) -> Vec<u8> {
        self.redact_partial(data, false).0
    }

    pub fn redact_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.patterns.is_empty() || !text.bytes().any(|b| self.first[b as usize]) {
            return Cow::Borrowed(text);
        }
        // Whole UTF-8 values replaced by ASCII in UTF-8 text leave it UTF-8.
        match String::from_utf8(self.redact_bytes(text.as_bytes())) {
            Ok(s) if s != text => Cow::Owned(s),
            Ok(_) => Cow::Borrowed(text),
            Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    }

    pub fn redact_string(&self, text: String) -> String {
        match self.redact_str(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(s) => s,
        }
    }

    /// Every string in `v`, object keys included.
    pub fn redact_json(&self, v: Value) -> Value {
        if self.patterns.is_empty() {
            return v;
        }
        match v {
            Value::String(s) => Value::String(self.redact_string(s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|x| self.redact_json(x)).collect()),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, x)| (self.redact_string(k), self.redact_json(x)))
                    .collect(),
            ),
            other => other,
        }
    }
}

/// Redacts one stream that arrives in pieces: what could be the start of a value waits for
/// the next piece.
#[derive(Default)]
pub struct StreamRedactor {
    carry: Vec<u8>,
}

impl StreamRedactor {
    pub fn push(&mut self, redactor: &Redactor, data: &[u8]) -> Vec<u8> {
        if redactor.is_empty() {
            return data.to_vec();
        }
        self.carry.extend_from_slice(data);
        let (out, used) = redactor.redact_partial(&self.carry, true);
        self.carry.drain(..used);
        out
    }

    pub fn finish(&mut self, redactor: &Redactor) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        redactor.redact_bytes(&rest)
    }
}
