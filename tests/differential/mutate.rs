//! Token generation by mutation: a valid Clerk-shaped token, changed at the
//! JSON level (members, types, repeats, nesting, numbers, strings), at the
//! text level (whitespace, escapes, number spellings, Unicode, broken
//! UTF-8), at the base64url level, in its signature, and in its shape. The
//! header and payload are re-signed after a change (so that parsing is what
//! is tested, not just the signature), unless the mutation is of the
//! signature itself.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use clerk_introspect::test_issuer::TestKey;
use fastrand::Rng;
use serde_json::Value;

/// A JSON text under construction: members in order and possibly repeated,
/// scalars as their exact text, strings as raw content bytes (possibly not
/// UTF-8).
#[derive(Clone, Debug)]
pub enum J {
    /// A number, `true`, `false` or `null`, as written.
    Lit(String),
    /// A string's content (escaped when written).
    Str(Vec<u8>),
    /// An array.
    Arr(Vec<J>),
    /// An object, members in order.
    Obj(Vec<(Vec<u8>, J)>),
}

impl J {
    pub fn from_value(v: &Value) -> J {
        match v {
            Value::Null => J::Lit("null".into()),
            Value::Bool(b) => J::Lit(b.to_string()),
            Value::Number(n) => J::Lit(n.to_string()),
            Value::String(s) => J::Str(s.as_bytes().to_vec()),
            Value::Array(a) => J::Arr(a.iter().map(J::from_value).collect()),
            Value::Object(o) => J::Obj(o.iter().map(|(k, v)| (k.as_bytes().to_vec(), J::from_value(v))).collect()),
        }
    }

    fn s(text: &str) -> J {
        J::Str(text.as_bytes().to_vec())
    }

    fn lit(text: impl Into<String>) -> J {
        J::Lit(text.into())
    }

    fn members(&mut self) -> Option<&mut Vec<(Vec<u8>, J)>> {
        match self {
            J::Obj(m) => Some(m),
            _ => None,
        }
    }

    /// Replaces the first member named `name`, or adds it.
    fn set(&mut self, name: &str, value: J) {
        if let Some(m) = self.members() {
            match m.iter_mut().find(|(k, _)| k == name.as_bytes()) {
                Some((_, v)) => *v = value,
                None => m.push((name.as_bytes().to_vec(), value)),
            }
        }
    }

    /// Every string value, depth first (for Unicode and escape mutations).
    fn strings_mut<'a>(&'a mut self, out: &mut Vec<&'a mut Vec<u8>>) {
        match self {
            J::Str(s) => out.push(s),
            J::Arr(a) => a.iter_mut().for_each(|v| v.strings_mut(out)),
            J::Obj(m) => m.iter_mut().for_each(|(_, v)| v.strings_mut(out)),
            J::Lit(_) => {}
        }
    }
}

/// How a [`J`] is written: each choice is made per token.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    /// Probability of whitespace at each place JSON allows it.
    pub whitespace: f64,
    /// Use whitespace JSON does not allow (NBSP, form feed, BOM, ...).
    pub bad_whitespace: bool,
    /// Probability of writing a string character as a `\u` escape.
    pub escape: f64,
    /// Write `/` as `\/` too.
    pub escape_solidus: bool,
}

const JSON_WS: [&str; 4] = [" ", "\t", "\n", "\r"];
const BAD_WS: [&str; 5] = ["\u{a0}", "\u{c}", "\u{b}", "\u{feff}", "\u{2028}"];

fn ws(rng: &mut Rng, style: &Style, out: &mut Vec<u8>) {
    if style.whitespace > 0.0 && rng.f64() < style.whitespace {
        let w = if style.bad_whitespace && rng.u8(..) < 32 {
            BAD_WS[rng.usize(..BAD_WS.len())]
        } else {
            JSON_WS[rng.usize(..4)]
        };
        out.extend_from_slice(w.as_bytes());
    }
}

fn write_str(rng: &mut Rng, style: &Style, s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    // Between RAW_OPEN and RAW_CLOSE, text meant to reach the JSON as is
    // (see `unmark_raw_escapes`): no style escapes there.
    let mut raw = false;
    // Walk UTF-8 characters where there are some; other bytes go out raw.
    let mut i = 0;
    while i < s.len() {
        let len = utf8_len(&s[i..]);
        let Some(ch) = std::str::from_utf8(&s[i..i + len]).ok().and_then(|c| c.chars().next()) else {
            out.push(s[i]);
            i += 1;
            continue;
        };
        i += len;
        match ch {
            RAW_OPEN | RAW_CLOSE => raw = ch == RAW_OPEN,
            _ => {}
        }
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '/' if style.escape_solidus && !raw => out.extend_from_slice(b"\\/"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c if !raw && c != RAW_OPEN && c != RAW_CLOSE && style.escape > 0.0 && rng.f64() < style.escape => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let text = if rng.bool() { format!("\\u{unit:04x}") } else { format!("\\u{unit:04X}") };
                    out.extend_from_slice(text.as_bytes());
                }
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

const RAW_OPEN: char = '\u{E000}';
const RAW_CLOSE: char = '\u{E001}';

/// Length of the UTF-8 sequence that starts `s` (1 for a byte that starts none).
fn utf8_len(s: &[u8]) -> usize {
    let want = match s[0] {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 1,
    };
    if s.len() >= want && std::str::from_utf8(&s[..want]).is_ok() { want } else { 1 }
}

pub fn write(rng: &mut Rng, style: &Style, j: &J, out: &mut Vec<u8>) {
    match j {
        J::Lit(t) => out.extend_from_slice(t.as_bytes()),
        J::Str(s) => write_str(rng, style, s, out),
        J::Arr(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    ws(rng, style, out);
                    out.push(b',');
                }
                ws(rng, style, out);
                write(rng, style, v, out);
                ws(rng, style, out);
            }
            out.push(b']');
        }
        J::Obj(members) => {
            out.push(b'{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                ws(rng, style, out);
                write_str(rng, style, k, out);
                ws(rng, style, out);
                out.push(b':');
                ws(rng, style, out);
                write(rng, style, v, out);
                ws(rng, style, out);
            }
            out.push(b'}');
        }
    }
}

/// The parts of one token before it is encoded and signed.
pub struct Draft {
    pub header: J,
    pub payload: J,
    /// Written as JSON from `header`, unless a raw-bytes mutation replaced it.
    pub header_bytes: Option<Vec<u8>>,
    pub payload_bytes: Option<Vec<u8>>,
    pub header_style: Style,
    pub payload_style: Style,
}

/// The mutations applied to one token, for reports.
#[derive(Default, Debug)]
pub struct Recipe(pub Vec<String>);

impl Recipe {
    fn note(&mut self, what: impl Into<String>) {
        self.0.push(what.into());
    }
}

/// The world the tokens are made for.
pub struct World<'k> {
    pub keys: &'k [TestKey],
    /// A key the verifier does not know.
    pub stranger: &'k TestKey,
    pub issuer: String,
    pub now: i64,
    pub skew: i64,
}

/// Header member names worth setting.
const HEADER_NAMES: [&str; 14] =
    ["alg", "kid", "typ", "cat", "crit", "enc", "zip", "b64", "jku", "jwk", "x5u", "x5c", "cty", "x"];
/// Claim names worth setting.
const CLAIM_NAMES: [&str; 16] =
    ["iss", "sub", "exp", "nbf", "iat", "azp", "aud", "role", "sts", "sid", "o", "v", "fva", "jti", "act", "metadata"];

fn any_value(rng: &mut Rng, w: &World<'_>) -> J {
    match rng.u8(..20) {
        0 => J::lit("null"),
        1 => J::lit("true"),
        2 => J::lit("false"),
        3 => J::lit(
            [
                "0",
                "-0",
                "1",
                "-1",
                "1.5",
                "1e2",
                "1E+2",
                "0.0",
                "-0.0",
                "1e400",
                "-1e400",
                "1e-400",
                "123456789012345678901234567890",
            ][rng.usize(..13)],
        ),
        4 => J::s(""),
        5 => J::s(
            ["authenticated", "service_role", "anon", "pending", "active", "JWT", "RS256", "ES256"][rng.usize(..8)],
        ),
        6 => J::Arr(vec![]),
        7 => J::Obj(vec![]),
        8 => J::Arr(vec![J::s("a"), J::lit("1")]),
        9 => J::Obj(vec![(b"a".to_vec(), J::lit("1"))]),
        10 => {
            let levels = [1, 2, 31, 32, 33, 40, 64][rng.usize(..7)];
            nested(rng, levels)
        }
        11 => J::s(&w.issuer),
        12 => J::Str(weird_bytes(rng)),
        13 => J::lit(time_text(rng, w.now, w.skew)),
        14 => J::s(["user_2abc", "mch_2abc", "x", "ins_other"][rng.usize(..4)]),
        15 => J::Arr(vec![J::s("a"), J::s("b")]),
        16 => J::s(w.keys[rng.usize(..w.keys.len())].kid()),
        17 => J::s("\u{1F600} é \u{2028}"),
        18 => J::lit(format!("\"{}\"", w.now)),
        _ => J::s("cl_B7d4PD111AAA"),
    }
}

/// A value nested `levels` deep (a scalar is level 0; each array or object adds one).
fn nested(rng: &mut Rng, levels: usize) -> J {
    let mut v = J::s("leaf");
    for _ in 0..levels {
        v = if rng.bool() { J::Arr(vec![v]) } else { J::Obj(vec![(b"a".to_vec(), v)]) };
    }
    v
}

/// Strings that are awkward for JSON and UTF-8.
fn weird_bytes(rng: &mut Rng) -> Vec<u8> {
    let choices: [&[u8]; 12] = [
        b"\xff",
        b"\xc0\xaf",         // overlong "/"
        b"\xed\xa0\x80",     // an encoded surrogate
        b"\xe2\x82",         // truncated
        b"\xf4\x90\x80\x80", // beyond U+10FFFF
        "\u{0}".as_bytes(),
        "\u{FFFD}".as_bytes(),
        "\u{FEFF}".as_bytes(),
        "e\u{301}".as_bytes(),
        "\u{10FFFF}".as_bytes(),
        b"\x7f",
        "\u{1F600}".as_bytes(),
    ];
    let mut out = b"x".to_vec();
    out.extend_from_slice(choices[rng.usize(..choices.len())]);
    out.push(b'y');
    out
}

/// A NumericDate near the edges of what the policy accepts, in one of the
/// spellings JSON allows.
fn time_text(rng: &mut Rng, now: i64, skew: i64) -> String {
    let base = now + [-skew - 1, -skew, -skew + 1, 0, skew - 1, skew, skew + 1, 60, -60, 3600][rng.usize(..10)];
    match rng.u8(..9) {
        0 => format!("{base}.0"),
        1 => format!("{base}.5"),
        2 => format!("{}.5", base - 1),
        3 => format!("{}e0", base),
        4 => format!("{base}0E-1"),
        5 => format!("{:.6e}", base as f64),
        6 => format!("{base}.000000001"),
        7 => format!("{}.999999999", base - 1),
        _ => base.to_string(),
    }
}

/// Escapes written raw into a string's content: `\u` sequences the writer
/// would never produce (lone surrogates, bad hex).
fn raw_escape(rng: &mut Rng) -> &'static str {
    ["\\ud800", "\\udc00", "\\ud800\\u0041", "\\uDBFF\\uDFFF", "\\u00e9", "\\u0000", "\\x41", "\\u12", "\\'"]
        [rng.usize(..9)]
}

/// Applies 1–3 random mutations (or, for a quarter of the tokens, only
/// harmless rewritings) to a fresh draft of the base token.
pub fn mutate(rng: &mut Rng, w: &World<'_>, d: &mut Draft, recipe: &mut Recipe) -> SignatureMutation {
    // Harmless rewritings: both verifiers must still say valid.
    if rng.u8(..4) == 0 {
        d.header_style = Style {
            whitespace: rng.f64() * 0.5,
            escape: rng.f64() * 0.5,
            escape_solidus: rng.bool(),
            ..Style::default()
        };
        d.payload_style = Style {
            whitespace: rng.f64() * 0.5,
            escape: rng.f64() * 0.5,
            escape_solidus: rng.bool(),
            ..Style::default()
        };
        recipe.note("harmless: whitespace and escapes");
        if rng.bool() {
            respell_numbers(rng, &mut d.payload, recipe);
        }
        if rng.bool() {
            d.payload.set("name", J::s("Zoë \u{1F600}\u{2028} e\u{301} \u{10FFFF}\u{FFFD}"));
            recipe.note("harmless: a claim with non-ASCII text");
        }
        return SignatureMutation::None;
    }
    for _ in 0..rng.usize(1..=3) {
        let header = rng.u8(..10) < 4;
        let (target, names): (&mut J, &[&str]) =
            if header { (&mut d.header, &HEADER_NAMES) } else { (&mut d.payload, &CLAIM_NAMES) };
        let part = if header { "header" } else { "payload" };
        match rng.u8(..22) {
            0 | 1 => {
                let name = names[rng.usize(..names.len())];
                if let Some(m) = target.members() {
                    m.retain(|(k, _)| k != name.as_bytes());
                }
                recipe.note(format!("{part}: remove {name}"));
            }
            2..=5 => {
                let name = names[rng.usize(..names.len())];
                let v = if header { header_value(rng, w, name) } else { claim_value(rng, w, name) };
                recipe.note(format!("{part}: set {name} = {v:?}"));
                target.set(name, v);
            }
            6 | 7 => {
                // A repeated member: same value, another value, or by escape.
                let Some(m) = target.members() else { continue };
                if m.is_empty() {
                    continue;
                }
                let (k, v) = m[rng.usize(..m.len())].clone();
                let value = if rng.bool() { v } else { any_value(rng, w) };
                let at = rng.usize(..=m.len());
                recipe.note(format!("{part}: repeat {:?}", String::from_utf8_lossy(&k)));
                m.insert(at, (k, value));
            }
            8 => {
                let Some(m) = target.members() else { continue };
                let levels = [2, 30, 31, 32, 33, 100][rng.usize(..6)];
                recipe.note(format!("{part}: nested {levels}"));
                m.push((b"deep".to_vec(), nested(rng, levels)));
            }
            9 => {
                // A repeat inside a nested object.
                let Some(m) = target.members() else { continue };
                recipe.note(format!("{part}: repeat inside a nested object"));
                m.push((b"nest".to_vec(), J::Obj(vec![(b"a".to_vec(), J::lit("1")), (b"a".to_vec(), J::lit("2"))])));
            }
            10 | 11 => {
                let mut strings = Vec::new();
                target.strings_mut(&mut strings);
                if strings.is_empty() {
                    continue;
                }
                let i = rng.usize(..strings.len());
                let s = &mut *strings[i];
                let at = rng.usize(..=s.len());
                if rng.bool() {
                    let bytes = weird_bytes(rng);
                    recipe.note(format!("{part}: bytes {bytes:?} into a string"));
                    s.splice(at..at, bytes);
                } else {
                    // Raw escape text: the writer escapes backslashes, so it goes into raw bytes below.
                    let e = raw_escape(rng);
                    recipe.note(format!("{part}: raw escape {e} into a string"));
                    let marker = format!("{RAW_OPEN}{e}{RAW_CLOSE}");
                    s.splice(at..at, marker.into_bytes());
                }
            }
            12 => {
                if !header {
                    respell_numbers(rng, target, recipe);
                }
            }
            13 => {
                let whole = [
                    "[]",
                    "[1]",
                    "\"x\"",
                    "1",
                    "null",
                    "",
                    "{",
                    "{}",
                    "{\"a\":1,}",
                    "{\"a\":1}x",
                    "{\"a\":1}{}",
                    "{/*c*/\"a\":1}",
                    "{'a':1}",
                    "{\"a\":01}",
                    "{\"a\":NaN}",
                    "{\"a\":.5}",
                    "{\"a\":+1}",
                ][rng.usize(..17)];
                recipe.note(format!("{part}: whole text {whole:?}"));
                if header {
                    d.header_bytes = Some(whole.as_bytes().to_vec());
                } else {
                    d.payload_bytes = Some(whole.as_bytes().to_vec());
                }
            }
            14 => {
                let style = Style {
                    whitespace: 0.3,
                    bad_whitespace: true,
                    escape: rng.f64() * 0.3,
                    escape_solidus: rng.bool(),
                };
                recipe.note(format!("{part}: odd whitespace"));
                if header {
                    d.header_style = style;
                } else {
                    d.payload_style = style;
                }
            }
            15 => {
                let prefix: &[u8] = [&b"\xef\xbb\xbf"[..], b" ", b"\n", b"\x00"][rng.usize(..4)];
                recipe.note(format!("{part}: prefix {prefix:?}"));
                let slot = if header { &mut d.header_bytes } else { &mut d.payload_bytes };
                let mut bytes = prefix.to_vec();
                let mut body = Vec::new();
                write(rng, &Style::default(), if header { &d.header } else { &d.payload }, &mut body);
                bytes.extend_from_slice(&body);
                *slot = Some(bytes);
            }
            16 => {
                let suffix: &[u8] = [&b" "[..], b"\n", b"\x00", b",", b"}", b"\xff"][rng.usize(..6)];
                recipe.note(format!("{part}: suffix {suffix:?}"));
                let mut body = Vec::new();
                write(rng, &Style::default(), if header { &d.header } else { &d.payload }, &mut body);
                body.extend_from_slice(suffix);
                if header {
                    d.header_bytes = Some(body);
                } else {
                    d.payload_bytes = Some(body);
                }
            }
            17 if header => {
                let alg = [
                    "RS256", "ES256", "EdDSA", "PS256", "RS384", "ES384", "HS256", "none", "rs256", "", "RS256 ",
                    "RSA256",
                ][rng.usize(..12)];
                recipe.note(format!("header: alg {alg}"));
                target.set("alg", J::s(alg));
            }
            18 if header => {
                let kid = match rng.u8(..4) {
                    0 => w.keys[rng.usize(..w.keys.len())].kid().to_owned(),
                    1 => w.stranger.kid().to_owned(),
                    2 => String::new(),
                    _ => "ins_unknown".into(),
                };
                recipe.note(format!("header: kid {kid}"));
                target.set("kid", J::Str(kid.into_bytes()));
            }
            19 if !header => {
                let iss = match rng.u8(..5) {
                    0 => format!("{}/", w.issuer),
                    1 => w.issuer.to_uppercase(),
                    2 => format!(" {}", w.issuer),
                    3 => w.issuer.replace("://", ":\\/\\/"),
                    _ => "https://clerk.other.example.com".into(),
                };
                recipe.note(format!("payload: iss {iss:?}"));
                target.set("iss", J::Str(iss.into_bytes()));
            }
            _ => {
                let name = if header { "typ" } else { "sts" };
                let v = if header {
                    J::s(["JWT", "jwt", "at+jwt", "application/jwt", "JOSE", "JWT "][rng.usize(..6)])
                } else {
                    J::s(["active", "pending", "ended", ""][rng.usize(..4)])
                };
                recipe.note(format!("{part}: {name} {v:?}"));
                target.set(name, v);
            }
        }
    }
    match rng.u8(..12) {
        0 => SignatureMutation::FlipBit,
        1 => SignatureMutation::Truncate,
        2 => SignatureMutation::Extend,
        3 => SignatureMutation::Empty,
        4 => SignatureMutation::Stranger,
        5 => SignatureMutation::HighS,
        6 => SignatureMutation::Der,
        7 => SignatureMutation::Encoding,
        8 => SignatureMutation::SegmentEncoding,
        9 => SignatureMutation::Shape,
        _ => SignatureMutation::None,
    }
}

/// Rewrites the payload's numbers in other spellings of the same value (or
/// next to it).
fn respell_numbers(rng: &mut Rng, payload: &mut J, recipe: &mut Recipe) {
    let Some(m) = payload.members() else { return };
    for (_, v) in m.iter_mut() {
        if let J::Lit(t) = v
            && let Ok(n) = t.parse::<i64>()
            && rng.bool()
        {
            let spelled = match rng.u8(..6) {
                0 => format!("{n}.0"),
                1 => format!("{n}e0"),
                2 => format!("{n}E+0"),
                3 => format!("{n}.00000"),
                4 => format!("{}E-1", n.saturating_mul(10)),
                _ => format!("{n}.5"),
            };
            // Only spellings of the same value are harmless; others are noted as such.
            let same = spelled.parse::<f64>().is_ok_and(|f| f == n as f64);
            recipe.note(format!("payload: {n} spelled {spelled}{}", if same { "" } else { " (another value)" }));
            *t = spelled;
        }
    }
}

fn header_value(rng: &mut Rng, w: &World<'_>, name: &str) -> J {
    match (name, rng.u8(..3)) {
        ("crit", 0) => J::Arr(vec![J::s(["b64", "exp", "x", "alg"][rng.usize(..4)])]),
        ("crit", 1) => J::Arr(vec![]),
        ("b64", 0) => J::lit("false"),
        ("b64", 1) => J::lit("true"),
        ("enc", 0) => J::s("A256GCM"),
        ("zip", 0) => J::s("DEF"),
        ("jwk", 0) => J::from_value(w.stranger.jwk()),
        ("jku" | "x5u", 0) => J::s("https://attacker.example.com/jwks.json"),
        _ => any_value(rng, w),
    }
}

fn claim_value(rng: &mut Rng, w: &World<'_>, name: &str) -> J {
    match (name, rng.u8(..3)) {
        ("exp" | "nbf" | "iat", 0 | 1) => J::lit(time_text(rng, w.now, w.skew)),
        ("aud", 0) => J::Arr(vec![J::s("a"), J::s("b")]),
        ("role", 0) => J::s(["authenticated", "service_role", "anon"][rng.usize(..3)]),
        ("sub", 0) => J::s(["user_x", "mch_x", ""][rng.usize(..3)]),
        _ => any_value(rng, w),
    }
}

/// What happens to the signature (and the token's encoding) after signing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureMutation {
    None,
    FlipBit,
    Truncate,
    Extend,
    Empty,
    /// Signed by a key the verifier does not know, with the token's kid.
    Stranger,
    /// ECDSA: (r, n − s), the other valid signature.
    HighS,
    /// ECDSA: DER instead of JOSE's r‖s.
    Der,
    /// The signature base64url with padding, whitespace, the standard
    /// alphabet or non-canonical trailing bits.
    Encoding,
    /// The header or payload segment so, re-signed.
    SegmentEncoding,
    /// Dots, parts, the Bearer scheme, whitespace around the token.
    Shape,
}

/// The order of P-256.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `a - b` for 256-bit big-endian numbers (a ≥ b).
fn sub256(a: &[u8; 32], b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = a[i] as i16 - b[i] as i16 - borrow;
        borrow = if d < 0 {
            d += 256;
            1
        } else {
            0
        };
        out[i] = d as u8;
    }
    out
}

fn der_integer(v: &[u8]) -> Vec<u8> {
    let mut v = v.iter().skip_while(|b| **b == 0).copied().collect::<Vec<u8>>();
    if v.first().is_none_or(|b| *b & 0x80 != 0) {
        v.insert(0, 0);
    }
    let mut out = vec![0x02, v.len() as u8];
    out.extend(v);
    out
}

/// base64url of `bytes`, in a variant a strict decoder refuses (or, rarely,
/// the canonical text).
fn odd_base64(rng: &mut Rng, bytes: &[u8], recipe: &mut Recipe, what: &str) -> String {
    let canonical = URL_SAFE_NO_PAD.encode(bytes);
    let text = match rng.u8(..6) {
        0 => URL_SAFE.encode(bytes) + "=",
        1 => {
            let padded = URL_SAFE.encode(bytes);
            if padded.ends_with('=') { padded } else { format!("{padded}==") }
        }
        2 => STANDARD_NO_PAD.encode(bytes),
        3 => STANDARD.encode(bytes),
        4 => {
            // Non-canonical trailing bits: the last character with its unused bits set.
            let mut t = canonical.clone().into_bytes();
            if !t.len().is_multiple_of(4)
                && let Some(last) = t.last_mut()
            {
                let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                let idx = alphabet.iter().position(|c| c == last).unwrap();
                let unused = if canonical.len() % 4 == 2 { 0b1111 } else { 0b11 };
                *last = alphabet[idx | unused];
            }
            String::from_utf8(t).unwrap()
        }
        _ => {
            let at = rng.usize(..=canonical.len());
            let w = [" ", "\n", "\t", "\r\n"][rng.usize(..4)];
            format!("{}{w}{}", &canonical[..at], &canonical[at..])
        }
    };
    recipe.note(format!("{what}: base64 written {}", if text == canonical { "canonically" } else { "oddly" }));
    text
}

/// Writes, encodes and signs a draft, then mutates the signature or shape.
pub fn finish(
    rng: &mut Rng,
    w: &World<'_>,
    key: &TestKey,
    d: &Draft,
    m: SignatureMutation,
    recipe: &mut Recipe,
) -> String {
    let mut header = d.header_bytes.clone().unwrap_or_else(|| {
        let mut out = Vec::new();
        write(rng, &d.header_style, &d.header, &mut out);
        out
    });
    let mut payload = d.payload_bytes.clone().unwrap_or_else(|| {
        let mut out = Vec::new();
        write(rng, &d.payload_style, &d.payload, &mut out);
        out
    });
    for text in [&mut header, &mut payload] {
        unmark_raw_escapes(text);
    }
    let (mut h64, mut p64) = (URL_SAFE_NO_PAD.encode(&header), URL_SAFE_NO_PAD.encode(&payload));
    if m == SignatureMutation::SegmentEncoding {
        if rng.bool() {
            h64 = odd_base64(rng, &header, recipe, "header segment");
        } else {
            p64 = odd_base64(rng, &payload, recipe, "payload segment");
        }
    }
    let input = format!("{h64}.{p64}");
    let signer = if m == SignatureMutation::Stranger { w.stranger } else { key };
    let mut sig = signer.sign_raw(input.as_bytes());
    let mut sig64 = None;
    match m {
        SignatureMutation::FlipBit => {
            let i = rng.usize(..sig.len() * 8);
            sig[i / 8] ^= 1 << (i % 8);
            recipe.note("signature: a bit flipped");
        }
        SignatureMutation::Truncate => {
            sig.pop();
            recipe.note("signature: a byte short");
        }
        SignatureMutation::Extend => {
            sig.push(0);
            recipe.note("signature: a byte long");
        }
        SignatureMutation::Empty => {
            sig.clear();
            recipe.note("signature: empty");
        }
        SignatureMutation::Stranger => recipe.note("signature: by an unknown key"),
        SignatureMutation::HighS if sig.len() == 64 => {
            let s = sub256(&P256_N, &sig[32..]);
            sig[32..].copy_from_slice(&s);
            recipe.note("signature: high S (n - s)");
        }
        SignatureMutation::Der if sig.len() == 64 => {
            let (r, s) = (der_integer(&sig[..32]), der_integer(&sig[32..]));
            let mut der = vec![0x30, (r.len() + s.len()) as u8];
            der.extend(r);
            der.extend(s);
            sig = der;
            recipe.note("signature: DER");
        }
        SignatureMutation::Encoding => sig64 = Some(odd_base64(rng, &sig, recipe, "signature")),
        _ => {}
    }
    let sig64 = sig64.unwrap_or_else(|| URL_SAFE_NO_PAD.encode(&sig));
    let token = format!("{input}.{sig64}");
    if m != SignatureMutation::Shape {
        return token;
    }
    let shaped = match rng.u8(..8) {
        0 => format!("{token}."),
        1 => input.clone(),
        2 => format!(".{token}"),
        3 => format!("{h64}..{sig64}"),
        4 => format!("Bearer {token}"),
        5 => format!("  {token}\n"),
        6 => format!("{token}.{sig64}"),
        _ => token.replacen('.', " .", 1),
    };
    recipe.note("shape changed");
    shaped
}

/// Raw escape text was put into string content between [`RAW_OPEN`] and
/// [`RAW_CLOSE`] (so that the writer passed it through with its backslash
/// doubled): remove the markers and undo the doubling there.
fn unmark_raw_escapes(text: &mut Vec<u8>) {
    let mut open = [0u8; 4];
    let mut close = [0u8; 4];
    let (open, close) =
        (RAW_OPEN.encode_utf8(&mut open).as_bytes().to_vec(), RAW_CLOSE.encode_utf8(&mut close).as_bytes().to_vec());
    while let Some(start) = find(text, &open) {
        let Some(end) = find(&text[start..], &close).map(|e| start + e) else { break };
        let inner = text[start + open.len()..end].to_vec();
        let mut raw = Vec::with_capacity(inner.len());
        let mut i = 0;
        while i < inner.len() {
            if inner[i] == b'\\' && inner.get(i + 1) == Some(&b'\\') {
                i += 1;
            }
            raw.push(inner[i]);
            i += 1;
        }
        text.splice(start..end + close.len(), raw);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
