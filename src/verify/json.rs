//! The strict JSON rules every token header and payload must meet before
//! anything is read from it: UTF-8 (RFC 8259 §8.1), one JSON text, no
//! member name twice in any object (RFC 7515 §4, RFC 7519 §4: "reject or use
//! the last"; we reject, so that no reader can see another value than we
//! did), at most [`MAX_DEPTH`] levels of nesting, and every value one that
//! `google.protobuf.Struct` can carry exactly (no lone surrogate escapes, no
//! number beyond a double's range).
//!
//! One pass over the text with serde, without building a value.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of objects and arrays accepted, counting the top-level
/// object as the first level. A `google.protobuf.Struct` spends two message
/// levels on each JSON level (a `Value` and a `Struct` or `ListValue`), and
/// Python's protobuf refuses messages nested more than 100 deep; 32 JSON
/// levels stay well inside that, and far beyond any real claim set.
pub const MAX_DEPTH: usize = 32;

/// Objects with more members than this detect repeats through a hash set
/// (below it, a linear scan is cheaper).
const LINEAR_SCAN_MEMBERS: usize = 16;

/// Why a JSON text was refused. Carries no text from the input except a
/// repeated member name (which the caller quotes, truncated and escaped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// Not one JSON text, or a value that cannot be represented exactly:
    /// what is wrong, in a few fixed words.
    NotJson(&'static str),
    /// Objects and arrays nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// An object has this member name twice.
    Duplicate(String),
}

/// Checks `bytes` against the rules above, and returns them as text.
pub fn check(bytes: &[u8]) -> Result<&str, Problem> {
    let text = std::str::from_utf8(bytes).map_err(|_| Problem::NotUtf8)?;
    check_text(text)?;
    Ok(text)
}

/// [`check`] for text already known to be UTF-8.
pub fn check_text(text: &str) -> Result<(), Problem> {
    let found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let walked = Walk { depth: 0, found: &found }.deserialize(&mut de).and_then(|()| de.end());
    match walked {
        Ok(()) => Ok(()),
        Err(e) => Err(found.take().unwrap_or_else(|| Problem::NotJson(describe(&e)))),
    }
}

/// A serde_json syntax error in a few fixed words (its own message is not
/// used: it is not meant for people, and must never carry input).
fn describe(e: &serde_json::Error) -> &'static str {
    let text = e.to_string();
    if text.starts_with("number out of range") {
        "a number beyond the range of a 64-bit float"
    } else if text.contains("surrogate")
        || text.starts_with("unexpected end of hex escape")
        || text.starts_with("invalid unicode code point")
    {
        "a \\u escape that is not a Unicode character (a lone surrogate)"
    } else if text.starts_with("control character") {
        "an unescaped control character in a string"
    } else if text.starts_with("trailing characters") {
        "text after the JSON value"
    } else if e.is_eof() {
        "an incomplete JSON value"
    } else {
        "text that is not JSON"
    }
}

/// One value, `depth` levels inside the top.
struct Walk<'a> {
    depth: usize,
    found: &'a Cell<Option<Problem>>,
}

impl<'a> Walk<'a> {
    fn inner<E: de::Error>(&self) -> Result<Walk<'a>, E> {
        if self.depth >= MAX_DEPTH {
            self.found.set(Some(Problem::TooDeep));
            return Err(E::custom("too deep"));
        }
        Ok(Walk { depth: self.depth + 1, found: self.found })
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while seq.next_element_seed(Walk { depth: inner.depth, found: inner.found })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        let mut names: Vec<Cow<'de, str>> = Vec::new();
        let mut many: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(Name(name)) = map.next_key()? {
            let repeated = match &mut many {
                Some(set) => !set.insert(name.clone()),
                None if names.len() < LINEAR_SCAN_MEMBERS => {
                    let seen = names.contains(&name);
                    names.push(name.clone());
                    seen
                }
                None => {
                    let mut set: HashSet<_> = names.drain(..).collect();
                    let seen = !set.insert(name.clone());
                    many = Some(set);
                    seen
                }
            };
            if repeated {
                self.found.set(Some(Problem::Duplicate(name.into_owned())));
                return Err(de::Error::custom("repeated member"));
            }
            map.next_value_seed(Walk { depth: inner.depth, found: inner.found })?;
        }
        Ok(())
    }
}

/// For `#[serde(deserialize_with)]` on an `Option<&RawValue>` member: the
/// member is there whatever its value. `Option`'s own impl reads `null` as
/// absent, which would make `"kid": null` or `"nbf": null` look missing.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de serde_json::value::RawValue>, D::Error> {
    <&serde_json::value::RawValue as de::Deserialize>::deserialize(d).map(Some)
}

/// A member name, borrowed from the text unless it has escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        // The top-level object is level 1; each array adds one.
        format!("{{\"a\":{}1{}}}", "[".repeat(levels - 1), "]".repeat(levels - 1))
    }

    #[test]
    fn depth_is_bounded_at_max_depth() {
        assert_eq!(check(nested(1).as_bytes()), Ok(nested(1).as_str()));
        assert_eq!(check_text(&nested(MAX_DEPTH - 1)), Ok(()));
        assert_eq!(check_text(&nested(MAX_DEPTH)), Ok(()));
        assert_eq!(check_text(&nested(MAX_DEPTH + 1)), Err(Problem::TooDeep));
        assert_eq!(check_text(&nested(200)), Err(Problem::TooDeep));
        // Far beyond serde_json's own recursion limit: still our answer.
        assert_eq!(check_text(&nested(5000)), Err(Problem::TooDeep));
        let objects = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        assert_eq!(check_text(&objects(MAX_DEPTH)), Ok(()));
        assert_eq!(check_text(&objects(MAX_DEPTH + 1)), Err(Problem::TooDeep));
    }

    #[test]
    fn repeated_names_are_found_at_every_level_and_size() {
        assert_eq!(check_text(r#"{"a":1,"a":2}"#), Err(Problem::Duplicate("a".into())));
        assert_eq!(check_text(r#"{"a":1,"\u0061":2}"#), Err(Problem::Duplicate("a".into())));
        assert_eq!(check_text(r#"{"x":[{"b":1,"b":1}]}"#), Err(Problem::Duplicate("b".into())));
        // Same name in sibling objects is fine.
        assert_eq!(check_text(r#"{"x":{"b":1},"y":{"b":1}}"#), Ok(()));
        for n in [2, LINEAR_SCAN_MEMBERS, LINEAR_SCAN_MEMBERS + 1, 200] {
            let members: Vec<String> = (0..n).map(|i| format!("\"m{i}\":{i}")).collect();
            let text = format!("{{{}}}", members.join(","));
            assert_eq!(check_text(&text), Ok(()), "{n} distinct members");
            for repeat in [0, n - 1] {
                let text = format!("{{{},\"m{repeat}\":0}}", members.join(","));
                assert_eq!(check_text(&text), Err(Problem::Duplicate(format!("m{repeat}"))), "{n} members, m{repeat}");
            }
        }
    }

    #[test]
    fn only_exactly_representable_utf8_json() {
        assert_eq!(check(b"{\"a\":\"\xff\"}"), Err(Problem::NotUtf8));
        for bad in [r#"{"a":"\ud800"}"#, r#"{"a":"\udc00x"}"#, r#"{"a":"\ud800\u0041"}"#] {
            assert!(matches!(check_text(bad), Err(Problem::NotJson(w)) if w.contains("surrogate")), "{bad}");
        }
        assert!(matches!(check_text(r#"{"a":1e400}"#), Err(Problem::NotJson(w)) if w.contains("range")));
        assert!(matches!(check_text(r#"{"a":-1e400}"#), Err(Problem::NotJson(w)) if w.contains("range")));
        assert!(matches!(check_text("{\"a\":\"\u{1}\"}"), Err(Problem::NotJson(w)) if w.contains("control")));
        assert!(matches!(check_text(r#"{"a":1} {}"#), Err(Problem::NotJson(w)) if w.contains("after")));
        assert!(matches!(check_text(r#"{"a":1"#), Err(Problem::NotJson(_))));
        assert!(matches!(check_text(r#"{'a':1}"#), Err(Problem::NotJson(_))));
        assert!(matches!(check_text(r#"{"a":01}"#), Err(Problem::NotJson(_))));
        assert!(matches!(check_text(r#"{"a":NaN}"#), Err(Problem::NotJson(_))));
        for good in [
            r#"{"a":"\ud83d\ude00","b":"é✓","c":[1e2,1.0,-0,1E-400,123456789012345678901234567890]}"#,
            " \t\r\n{ \"a\" : [ ] , \"b\" : { } } \n",
            r#""just a string""#,
            "[]",
        ] {
            assert_eq!(check_text(good), Ok(()), "{good}");
        }
    }
}
