//! The claims we read from a payload, extracted once (the checks applied to
//! them on every verification are [`super::policy`]'s).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A claim that may be absent, present with the right type, or present with
/// the wrong type (which is never silently treated as absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Claim<T> {
    /// Not in the payload (or JSON `null`).
    #[default]
    Absent,
    /// Present, but not of the expected JSON type.
    WrongType,
    /// Present and well-typed.
    Present(T),
}

impl<T> Claim<T> {
    /// The value, if present and well-typed.
    pub fn get(&self) -> Option<&T> {
        match self {
            Claim::Present(v) => Some(v),
            _ => None,
        }
    }
}

/// The organization claims, from session token v2 (`o.id`, `o.rol`,
/// `o.slg`) or v1 (`org_id`, `org_role`, `org_slug`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Organization {
    /// `o.id` / `org_id`.
    pub id: Option<String>,
    /// `o.rol` / `org_role`, as the token has it.
    pub role: Option<String>,
    /// `o.slg` / `org_slug`.
    pub slug: Option<String>,
}

/// Claims of a token, extracted from the payload once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// `iss`.
    pub iss: Claim<String>,
    /// `sub`.
    pub sub: Claim<String>,
    /// `exp`, whole seconds (a fraction rounded down, toward expiry).
    pub exp: Claim<i64>,
    /// `nbf` (a fraction rounded up, toward "not yet valid").
    pub nbf: Claim<i64>,
    /// `iat` (a fraction rounded up).
    pub iat: Claim<i64>,
    /// `azp`.
    pub azp: Claim<String>,
    /// `aud`, a string or an array of strings (a string becomes one element).
    pub aud: Claim<Vec<String>>,
    /// `role`: the Postgres role Supabase will use.
    pub role: Claim<String>,
    /// `sid`.
    pub sid: Option<String>,
    /// `sts` (session status).
    pub sts: Claim<String>,
    /// Active organization (v1 or v2 claims).
    pub org: Organization,
}

/// The claims we read; every other member is skipped by serde (and kept in
/// the payload bytes for GetClaims). A repeated member we read is an error.
#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(borrow)]
    iss: Option<&'a RawValue>,
    #[serde(borrow)]
    sub: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::json::present")]
    exp: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::json::present")]
    nbf: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "super::json::present")]
    iat: Option<&'a RawValue>,
    #[serde(borrow)]
    azp: Option<&'a RawValue>,
    #[serde(borrow)]
    aud: Option<&'a RawValue>,
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    sid: Option<&'a RawValue>,
    #[serde(borrow)]
    sts: Option<&'a RawValue>,
    #[serde(borrow)]
    o: Option<&'a RawValue>,
    #[serde(borrow)]
    org_id: Option<&'a RawValue>,
    #[serde(borrow)]
    org_role: Option<&'a RawValue>,
    #[serde(borrow)]
    org_slug: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawOrg<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    rol: Option<Cow<'a, str>>,
    #[serde(borrow)]
    slg: Option<Cow<'a, str>>,
}

impl Claims {
    /// Parses a payload. `None` when it is not a JSON object, or repeats a
    /// claim this service reads (ambiguous: which one would Supabase use?).
    pub fn parse(payload: &[u8]) -> Option<Claims> {
        let raw: RawClaims<'_> = serde_json::from_slice(payload).ok()?;
        let org_v2 = raw.o.and_then(|o| serde_json::from_str::<RawOrg<'_>>(o.get()).ok());
        let org = match org_v2 {
            Some(o) => Organization {
                id: o.id.map(Cow::into_owned),
                role: o.rol.map(Cow::into_owned),
                slug: o.slg.map(Cow::into_owned),
            },
            None => Organization {
                id: string(raw.org_id).get().cloned(),
                role: string(raw.org_role).get().cloned(),
                slug: string(raw.org_slug).get().cloned(),
            },
        };
        Some(Claims {
            iss: string(raw.iss),
            sub: string(raw.sub),
            exp: numeric_date(raw.exp, Round::Down),
            nbf: numeric_date(raw.nbf, Round::Up),
            iat: numeric_date(raw.iat, Round::Up),
            azp: string(raw.azp),
            aud: audience(raw.aud),
            role: string(raw.role),
            sid: string(raw.sid).get().cloned(),
            sts: string(raw.sts),
            org,
        })
    }
}

fn is_null(v: &RawValue) -> bool {
    v.get() == "null"
}

fn string(v: Option<&RawValue>) -> Claim<String> {
    match v {
        None => Claim::Absent,
        Some(v) if is_null(v) => Claim::Absent,
        Some(v) => serde_json::from_str::<String>(v.get()).map_or(Claim::WrongType, Claim::Present),
    }
}

/// Which way a fractional NumericDate is rounded: always toward refusing
/// the token, so that no fraction makes it valid a moment earlier or later
/// than the exact comparison would.
#[derive(Clone, Copy)]
enum Round {
    /// For `exp`.
    Down,
    /// For `nbf` and `iat`.
    Up,
}

/// RFC 7519 NumericDate: a JSON number of seconds, possibly fractional.
/// `null` is not a number: it is the wrong type, not an absent claim
/// (jose, for one, refuses `"nbf": null`).
fn numeric_date(v: Option<&RawValue>, round: Round) -> Claim<i64> {
    match v {
        None => Claim::Absent,
        Some(v) => {
            let text = v.get();
            if let Ok(i) = text.parse::<i64>() {
                return Claim::Present(i);
            }
            match serde_json::from_str::<f64>(text) {
                // `as` saturates at the i64 range, which is what we want.
                Ok(f) if f.is_finite() => Claim::Present(match round {
                    Round::Down => f.floor(),
                    Round::Up => f.ceil(),
                } as i64),
                _ => Claim::WrongType,
            }
        }
    }
}

fn audience(v: Option<&RawValue>) -> Claim<Vec<String>> {
    match v {
        None => Claim::Absent,
        Some(v) if is_null(v) => Claim::Absent,
        Some(v) => {
            if let Ok(s) = serde_json::from_str::<String>(v.get()) {
                return Claim::Present(vec![s]);
            }
            serde_json::from_str::<Vec<String>>(v.get()).map_or(Claim::WrongType, Claim::Present)
        }
    }
}
