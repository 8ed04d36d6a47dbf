//! Numbers in requests, as clients really send them.
//!
//! Runloop's Python client sends floats where the API reads as if it takes integers (its
//! `await_*` helpers send `"timeout_seconds": 29.98`), and query strings carry numbers as
//! text. A request field that is a number is a [`Number`]: any JSON number, or the text of
//! one, kept as sent. It is checked where it is used, by [`seconds`], [`whole`] or
//! [`real`], so that a bad value is a 400 naming its field (a serde error cannot).
//! In the OpenAPI document such a field is a `number` (`value_type = f64`).

use crate::error::{ApiError, ApiResult};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::ops::RangeInclusive;
use std::time::Duration;

/// The most seconds any duration in a request may be (about 31 years); more is a mistake.
pub const MAX_SECONDS: f64 = 1e9;

/// A number a request sent: a JSON number or the text of one; see the module's doc.
#[derive(Debug, Clone, PartialEq)]
pub struct Number(Sent);

#[derive(Debug, Clone, PartialEq)]
enum Sent {
    /// A finite number.
    Finite(f64),
    /// An empty query parameter (`?last_n=`): as if absent.
    Empty,
    /// Anything else, as sent (for the error message).
    Invalid(String),
}

impl Number {
    /// A number that is what it is (for defaults and tests).
    pub fn new(n: f64) -> Self {
        Number(if n.is_finite() {
            Sent::Finite(n)
        } else {
            Sent::Invalid(n.to_string())
        })
    }

    /// The finite number sent, `None` when it was empty, or the 400 naming `field`.
    fn finite(&self, field: &str, expected: &str) -> ApiResult<Option<f64>> {
        match &self.0 {
            Sent::Finite(n) => Ok(Some(*n)),
            Sent::Empty => Ok(None),
            Sent::Invalid(raw) => Err(invalid(field, expected, raw)),
        }
    }
}

fn invalid(field: &str, expected: &str, raw: &str) -> ApiError {
    ApiError::BadRequest(format!("`{field}` must be {expected}, not {raw}"))
}

/// A duration in seconds, fractions allowed (`0.5` is 500 ms), from 0 to [`MAX_SECONDS`].
pub fn seconds(field: &str, n: Option<&Number>) -> ApiResult<Option<Duration>> {
    let expected = format!("a number of seconds from 0 to {MAX_SECONDS}");
    let Some(v) = n.map(|n| n.finite(field, &expected)).transpose()?.flatten() else {
        return Ok(None);
    };
    if !(0.0..=MAX_SECONDS).contains(&v) {
        return Err(invalid(field, &expected, &v.to_string()));
    }
    Ok(Some(Duration::from_secs_f64(v)))
}

/// A whole number in `range`; `30.0` is 30, `2.5` is refused.
pub fn whole(
    field: &str,
    n: Option<&Number>,
    range: RangeInclusive<u64>,
) -> ApiResult<Option<u64>> {
    let expected = format!("a whole number from {} to {}", range.start(), range.end());
    let Some(v) = n.map(|n| n.finite(field, &expected)).transpose()?.flatten() else {
        return Ok(None);
    };
    // Beyond 2^53 a float is no longer exact: outside any sensible range anyway.
    if v.fract() != 0.0 || !(0.0..=9_007_199_254_740_992.0).contains(&v) {
        return Err(invalid(field, &expected, &v.to_string()));
    }
    let w = v as u64;
    if !range.contains(&w) {
        return Err(invalid(field, &expected, &v.to_string()));
    }
    Ok(Some(w))
}

/// Any number in `range`, fractions allowed.
pub fn real(field: &str, n: Option<&Number>, range: RangeInclusive<f64>) -> ApiResult<Option<f64>> {
    let expected = format!("a number from {} to {}", range.start(), range.end());
    let Some(v) = n.map(|n| n.finite(field, &expected)).transpose()?.flatten() else {
        return Ok(None);
    };
    if !range.contains(&v) {
        return Err(invalid(field, &expected, &v.to_string()));
    }
    Ok(Some(v))
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Anything is taken here (JSON, or a query string's text) and judged when used.
        Ok(Number(match Value::deserialize(d)? {
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() => Sent::Finite(f),
                _ => Sent::Invalid(n.to_string()),
            },
            Value::String(s) if s.trim().is_empty() => Sent::Empty,
            Value::String(s) => match s.trim().parse::<f64>() {
                // Rust also parses "NaN" and "inf": not numbers a request may send.
                Ok(f) if f.is_finite() => Sent::Finite(f),
                _ => Sent::Invalid(format!("{s:?}")),
            },
            other => Sent::Invalid(other.to_string()),
        }))
    }
}

impl Serialize for Number {
    /// As a JSON number, whole numbers as integers (`30.0` echoes as `30`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Sent::Finite(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                s.serialize_i64(*f as i64)
            }
            Sent::Finite(f) => s.serialize_f64(*f),
            Sent::Empty => s.serialize_none(),
            Sent::Invalid(raw) => s.serialize_str(raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Number {
        serde_json::from_str(s).unwrap()
    }

    #[derive(Deserialize)]
    struct Query {
        n: Option<Number>,
    }

    fn query(s: &str) -> Option<Number> {
        let uri: axum::http::Uri = format!("/?{s}").parse().unwrap();
        axum::extract::Query::<Query>::try_from_uri(&uri)
            .unwrap()
            .0
            .n
    }

    #[test]
    fn seconds_take_fractions_and_refuse_nonsense_naming_the_field() {
        let secs = |s: &str| seconds("timeout_seconds", Some(&json(s)));
        assert_eq!(secs("30").unwrap(), Some(Duration::from_secs(30)));
        assert_eq!(secs("30.0").unwrap(), Some(Duration::from_secs(30)));
        assert_eq!(secs("0.5").unwrap(), Some(Duration::from_millis(500)));
        assert_eq!(secs("0").unwrap(), Some(Duration::ZERO));
        assert_eq!(secs("\"2.5\"").unwrap(), Some(Duration::from_millis(2500)));
        for bad in [
            "-1", "\"abc\"", "1e300", "true", "[1]", "{}", "\"NaN\"", "\"inf\"",
        ] {
            let err = secs(bad).unwrap_err().to_string();
            assert!(err.contains("`timeout_seconds`"), "{bad}: {err}");
        }
        assert_eq!(seconds("t", None).unwrap(), None);
    }

    #[test]
    fn whole_numbers_take_integral_floats_only() {
        let w = |s: &str| whole("limit", Some(&json(s)), 1..=1000);
        assert_eq!(w("10").unwrap(), Some(10));
        assert_eq!(w("10.0").unwrap(), Some(10));
        assert_eq!(w("1e2").unwrap(), Some(100));
        for bad in ["2.5", "0", "1001", "-3", "1e20", "\"x\"", "null"] {
            let err = w(bad).unwrap_err().to_string();
            assert!(err.contains("`limit`"), "{bad}: {err}");
        }
    }

    #[test]
    fn real_numbers_keep_their_fraction() {
        let r = |s: &str| real("cpu", Some(&json(s)), 0.5..=16.0);
        assert_eq!(r("1.5").unwrap(), Some(1.5));
        assert_eq!(r("2").unwrap(), Some(2.0));
        assert!(r("0.25").is_err());
        assert!(r("17").is_err());
    }

    #[test]
    fn query_strings_carry_numbers_as_text() {
        assert_eq!(
            whole("last_n", query("n=5").as_ref(), 0..=9).unwrap(),
            Some(5)
        );
        assert_eq!(
            whole("last_n", query("n=5.0").as_ref(), 0..=9).unwrap(),
            Some(5)
        );
        assert_eq!(whole("last_n", query("n=").as_ref(), 0..=9).unwrap(), None);
        assert_eq!(whole("last_n", query("").as_ref(), 0..=9).unwrap(), None);
        assert!(whole("last_n", query("n=abc").as_ref(), 0..=9).is_err());
    }

    #[test]
    fn numbers_echo_as_sent() {
        assert_eq!(serde_json::to_string(&json("30.0")).unwrap(), "30");
        assert_eq!(serde_json::to_string(&json("1.5")).unwrap(), "1.5");
        assert_eq!(serde_json::to_string(&Number::new(4.0)).unwrap(), "4");
    }
}
