//! JSON Web Keys: the algorithms we verify, and the parsing of a JWKS into
//! ready-to-use verification keys (parsed once, at load time).

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// Most keys accepted from one JWKS document; more is treated as an error.
pub const MAX_KEYS: usize = 100;

/// Smallest RSA modulus accepted, in bits (RFC 7518 §3.3 requires 2048).
pub const MIN_RSA_BITS: usize = 2048;

/// A JWS algorithm this service can verify. Symmetric algorithms and `none`
/// are deliberately absent: they can never be configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (what Clerk signs session tokens with).
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

/// What a token's `alg` header names, classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlgClass {
    /// An asymmetric algorithm we implement.
    Supported(Algorithm),
    /// `none`: an unsigned token.
    None,
    /// HS256/384/512: a shared secret.
    Symmetric,
    /// Anything else (ES512, RSA1_5, typos...).
    Unknown,
}

impl Algorithm {
    /// Every algorithm, in a stable order.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The JOSE name (`"RS256"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Classifies a JOSE `alg` value. Matching is exact (JOSE names are
    /// case-sensitive), except that any spelling of "none" counts as none.
    pub fn classify(name: &str) -> AlgClass {
        match name {
            "RS256" => AlgClass::Supported(Algorithm::RS256),
            "RS384" => AlgClass::Supported(Algorithm::RS384),
            "RS512" => AlgClass::Supported(Algorithm::RS512),
            "PS256" => AlgClass::Supported(Algorithm::PS256),
            "PS384" => AlgClass::Supported(Algorithm::PS384),
            "PS512" => AlgClass::Supported(Algorithm::PS512),
            "ES256" => AlgClass::Supported(Algorithm::ES256),
            "ES384" => AlgClass::Supported(Algorithm::ES384),
            "EdDSA" => AlgClass::Supported(Algorithm::EdDSA),
            n if n.eq_ignore_ascii_case("none") => AlgClass::None,
            // Bytes, not `str` slicing: the name is any text from a token.
            n if n.len() == 5 && n.as_bytes()[..2].eq_ignore_ascii_case(b"HS") => AlgClass::Symmetric,
            _ => AlgClass::Unknown,
        }
    }

    /// The kind of key that can verify this algorithm.
    pub const fn family(self) -> KeyFamily {
        match self {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyFamily::Rsa,
            Algorithm::ES256 => KeyFamily::EcP256,
            Algorithm::ES384 => KeyFamily::EcP384,
            Algorithm::EdDSA => KeyFamily::Ed25519,
        }
    }

    const fn bit(self) -> u16 {
        1 << (self as u16)
    }

    fn rsa_parameters(self) -> Option<&'static RsaParameters> {
        Some(match self {
            Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
            Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
            Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match Algorithm::classify(s.trim()) {
            AlgClass::Supported(a) => Ok(a),
            AlgClass::None => Err("\"none\" means unsigned tokens and can never be allowed".into()),
            AlgClass::Symmetric => Err(format!(
                "{s} is a shared-secret algorithm; Clerk signs with asymmetric keys and no secret is ever shared, so HS256/384/512 can never be allowed"
            )),
            AlgClass::Unknown => Err(format!(
                "unknown algorithm {s:?}; choose from RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
            )),
        }
    }
}

/// A set of [`Algorithm`]s, as a bit set.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AlgorithmSet(u16);

impl AlgorithmSet {
    /// No algorithm.
    pub const EMPTY: AlgorithmSet = AlgorithmSet(0);

    /// Every asymmetric algorithm we implement (the default allow-list).
    pub const fn all() -> AlgorithmSet {
        let mut bits = 0;
        let mut i = 0;
        while i < Algorithm::ALL.len() {
            bits |= Algorithm::ALL[i].bit();
            i += 1;
        }
        AlgorithmSet(bits)
    }

    /// Whether `alg` is in the set.
    pub const fn contains(self, alg: Algorithm) -> bool {
        self.0 & alg.bit() != 0
    }

    /// The set with `alg` added.
    pub const fn with(self, alg: Algorithm) -> AlgorithmSet {
        AlgorithmSet(self.0 | alg.bit())
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The algorithms in the set, in [`Algorithm::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Algorithm> {
        Algorithm::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

impl Default for AlgorithmSet {
    fn default() -> Self {
        AlgorithmSet::all()
    }
}

impl FromIterator<Algorithm> for AlgorithmSet {
    fn from_iter<I: IntoIterator<Item = Algorithm>>(iter: I) -> Self {
        iter.into_iter().fold(AlgorithmSet::EMPTY, AlgorithmSet::with)
    }
}

impl fmt::Debug for AlgorithmSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for AlgorithmSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for a in self.iter() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            f.write_str(a.as_str())?;
        }
        Ok(())
    }
}

/// The type (and curve) of a public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    /// `kty: RSA`.
    Rsa,
    /// `kty: EC`, `crv: P-256`.
    EcP256,
    /// `kty: EC`, `crv: P-384`.
    EcP384,
    /// `kty: OKP`, `crv: Ed25519`.
    Ed25519,
}

impl KeyFamily {
    /// A short human name: `RSA`, `EC P-256`, `EC P-384`, `OKP Ed25519`.
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyFamily::Rsa => "RSA",
            KeyFamily::EcP256 => "EC P-256",
            KeyFamily::EcP384 => "EC P-384",
            KeyFamily::Ed25519 => "OKP Ed25519",
        }
    }
}

/// One public key, parsed and ready: for each algorithm it may verify, an
/// aws-lc-rs [`ParsedPublicKey`] built once at load time, so that the hot
/// path never parses or copies key material.
pub struct VerificationKey {
    kid: Option<Box<str>>,
    family: KeyFamily,
    jwk_alg: Option<Algorithm>,
    /// The key material (n‖e, or the EC/OKP point), for identity across refreshes.
    material: Box<[u8]>,
    rsa_bits: usize,
    verifiers: Vec<(Algorithm, ParsedPublicKey)>,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.jwk_alg)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// The key id, if the JWK had one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The key's type and curve.
    pub fn family(&self) -> KeyFamily {
        self.family
    }

    /// The JWK's own `alg`, if it named one.
    pub fn jwk_alg(&self) -> Option<Algorithm> {
        self.jwk_alg
    }

    /// RSA modulus size in bits (0 for other key types).
    pub fn rsa_bits(&self) -> usize {
        self.rsa_bits
    }

    /// Whether this key may verify `alg`: the key type and curve must match,
    /// and so must the JWK's own `alg` when it has one.
    pub fn supports(&self, alg: Algorithm) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == alg)
    }

    /// The algorithms this key may verify.
    pub fn algorithms(&self) -> AlgorithmSet {
        self.verifiers.iter().map(|(a, _)| *a).collect()
    }

    /// Verifies `signature` over `message` with `alg`. False when the key
    /// does not support `alg` or the signature is wrong.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }

    /// Whether two keys are the same key (same kid, type, alg and material).
    pub fn same_key_as(&self, other: &VerificationKey) -> bool {
        self.kid == other.kid
            && self.family == other.family
            && self.jwk_alg == other.jwk_alg
            && self.material == other.material
    }
}

/// Why a JWK was left out of the key set. Skipped keys are counted and
/// logged; they never fail the whole set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    /// `use` is not `sig`.
    #[error("use is {0:?}, not \"sig\"")]
    NotForSignatures(String),
    /// `key_ops` does not include `verify`.
    #[error("key_ops does not include \"verify\"")]
    NoVerifyOp,
    /// A symmetric (`oct`) key: never used, whatever the token says.
    #[error("symmetric (oct) keys are never used")]
    Symmetric,
    /// A key type or curve we do not implement.
    #[error("unsupported key type {0}")]
    UnsupportedType(String),
    /// The JWK's `alg` is not one we verify, or does not fit its key type.
    #[error("alg {0:?} is not usable with this key type")]
    UnsupportedAlg(String),
    /// RSA modulus below [`MIN_RSA_BITS`].
    #[error("RSA modulus of {0} bits is below the 2048-bit minimum")]
    WeakRsa(usize),
    /// Missing or malformed key parameters.
    #[error("invalid key material: {0}")]
    Invalid(&'static str),
    /// A second key with the same kid and type as an earlier one.
    #[error("duplicate kid")]
    DuplicateKid,
}

/// A key that was skipped, with its kid (if any) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedKey {
    /// The JWK's kid, if it had one (truncated for logs).
    pub kid: Option<String>,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// Why a whole JWKS document was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not JSON, or not an object with a `keys` array.
    #[error("not a JWKS document: {0}")]
    NotJwks(String),
    /// More than [`MAX_KEYS`] keys.
    #[error("the JWKS has {0} keys, more than the limit of {MAX_KEYS}")]
    TooManyKeys(usize),
    /// Every key was skipped.
    #[error("the JWKS has no usable signing key ({skipped} skipped)")]
    NoUsableKeys {
        /// How many keys were skipped.
        skipped: usize,
    },
}

/// The usable keys of one JWKS document, plus what was skipped.
#[derive(Debug)]
pub struct ParsedJwks {
    /// Keys ready to verify with.
    pub keys: Vec<Arc<VerificationKey>>,
    /// Keys left out, and why.
    pub skipped: Vec<SkippedKey>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parses a JWKS document into verification keys.
///
/// Keys that cannot be used (encryption keys, symmetric keys, unsupported
/// types, weak or malformed keys) are skipped and reported, never fatal.
/// `previous` keys that are unchanged are reused, so a key keeps its
/// identity (and its parsed form) across refreshes.
pub fn parse_jwks(body: &[u8], previous: &[Arc<VerificationKey>]) -> Result<ParsedJwks, JwksError> {
    let raw: RawJwks = serde_json::from_slice(body).map_err(|e| JwksError::NotJwks(e.to_string()))?;
    if raw.keys.len() > MAX_KEYS {
        return Err(JwksError::TooManyKeys(raw.keys.len()));
    }
    let mut keys: Vec<Arc<VerificationKey>> = Vec::with_capacity(raw.keys.len());
    let mut skipped = Vec::new();
    for value in raw.keys {
        let kid_for_log = value.get("kid").and_then(|k| k.as_str()).map(|k| truncate(k, 64));
        let parsed = serde_json::from_value::<RawJwk>(value)
            .map_err(|_| SkipReason::Invalid("a member has the wrong JSON type"))
            .and_then(|raw| key_from_raw(&raw));
        match parsed {
            Ok(key) => {
                if keys.iter().any(|k| k.kid == key.kid && k.kid.is_some() && k.family == key.family) {
                    skipped.push(SkippedKey { kid: kid_for_log, reason: SkipReason::DuplicateKid });
                    continue;
                }
                let key = previous.iter().find(|old| old.same_key_as(&key)).cloned().unwrap_or_else(|| Arc::new(key));
                keys.push(key);
            }
            Err(reason) => skipped.push(SkippedKey { kid: kid_for_log, reason }),
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys { skipped: skipped.len() });
    }
    Ok(ParsedJwks { keys, skipped })
}

/// Builds a verification key from one JWK given as JSON.
pub fn key_from_jwk_json(jwk: &serde_json::Value) -> Result<VerificationKey, SkipReason> {
    let raw = RawJwk::deserialize(jwk).map_err(|_| SkipReason::Invalid("a member has the wrong JSON type"))?;
    key_from_raw(&raw)
}

// === PEM and DER public keys (networkless configuration) ===

/// Largest PEM text accepted for one public key (an 8192-bit RSA key is
/// about 1.5 KiB of PEM).
pub const MAX_PEM_BYTES: usize = 16 * 1024;

/// Why a PEM public key was refused. Messages say what to give instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PemKeyError {
    /// No BEGIN/END block.
    #[error(
        "no PEM block found; give the key as Clerk's dashboard shows it: \"-----BEGIN PUBLIC KEY-----\", base64 lines, \"-----END PUBLIC KEY-----\""
    )]
    NoBlock,
    /// A BEGIN line without its END line.
    #[error("the PEM block has no matching \"-----END {0}-----\" line")]
    Unterminated(String),
    /// More than one PEM block.
    #[error("more than one PEM block; give exactly one public key per issuer entry (or use jwks_file for several)")]
    SeveralBlocks,
    /// A private key was given.
    #[error(
        "this is a PRIVATE key; give the public key (Clerk dashboard: API keys, \"JWT public key\"), and never put a private key in this configuration"
    )]
    PrivateKey,
    /// A certificate was given.
    #[error(
        "this is a certificate, not a public key; give the public key (openssl x509 -pubkey -noout -in cert.pem prints it)"
    )]
    Certificate,
    /// Another kind of PEM block.
    #[error("a PEM block of type {0:?} is not a public key; give a \"PUBLIC KEY\" block")]
    WrongLabel(String),
    /// The body is not base64.
    #[error("the text between the BEGIN and END lines is not base64")]
    NotBase64,
    /// Larger than [`MAX_PEM_BYTES`].
    #[error("the PEM text is larger than {MAX_PEM_BYTES} bytes; a public key is about 0.5 to 1.5 KiB")]
    TooLarge,
    /// The DER inside is not a usable public key.
    #[error("{0}")]
    Key(SkipReason),
}

impl VerificationKey {
    /// Builds a key from a PEM public key, as Clerk's dashboard gives it
    /// ("JWT public key", the `CLERK_JWT_KEY` of its SDKs): a `PUBLIC KEY`
    /// (SubjectPublicKeyInfo) or `RSA PUBLIC KEY` (PKCS #1) block.
    ///
    /// Mangled copies that are unambiguous are accepted, because they are
    /// what environment variables and YAML often make of a multi-line
    /// value: surrounding quotes, literal `\n` escapes instead of line
    /// breaks, CRLF, indentation, or the whole key on one line with spaces.
    /// Nothing else is guessed: the DER inside must be exactly one valid
    /// public key (RSA of at least 2048 bits, EC P-256/P-384, or Ed25519).
    ///
    /// The key may verify every algorithm of its type (the issuer's
    /// `algorithms` narrow that); `kid` is the key id to match tokens
    /// against, or `None` to verify a token whatever its kid.
    pub fn from_public_key_pem(pem: &str, kid: Option<&str>) -> Result<VerificationKey, PemKeyError> {
        let der = pem_public_key_der(pem)?;
        VerificationKey::from_public_key_der(&der, kid).map_err(PemKeyError::Key)
    }

    /// Builds a key from DER: an X.509 SubjectPublicKeyInfo (RSA, EC
    /// P-256/P-384, Ed25519) or a PKCS #1 RSAPublicKey.
    pub fn from_public_key_der(der: &[u8], kid: Option<&str>) -> Result<VerificationKey, SkipReason> {
        let kid: Option<Box<str>> = kid.map(Box::from);
        if let Ok(rsa) = aws_lc_rs::rsa::PublicKey::from_der(der) {
            let n = rsa.modulus().big_endian_without_leading_zero();
            let e = rsa.exponent().big_endian_without_leading_zero();
            let algs = Algorithm::ALL.into_iter().filter(|a| a.family() == KeyFamily::Rsa);
            return rsa_key(kid, None, n, e, algs);
        }
        let others: [(KeyFamily, Algorithm, &'static dyn sig::VerificationAlgorithm); 3] = [
            (KeyFamily::EcP256, Algorithm::ES256, &sig::ECDSA_P256_SHA256_FIXED),
            (KeyFamily::EcP384, Algorithm::ES384, &sig::ECDSA_P384_SHA384_FIXED),
            (KeyFamily::Ed25519, Algorithm::EdDSA, &sig::ED25519),
        ];
        for (family, alg, verify_alg) in others {
            if let Ok(parsed) = ParsedPublicKey::new(verify_alg, der) {
                return Ok(VerificationKey {
                    kid,
                    family,
                    jwk_alg: None,
                    material: der.into(),
                    rsa_bits: 0,
                    verifiers: vec![(alg, parsed)],
                });
            }
        }
        Err(SkipReason::Invalid("not an RSA, EC P-256, EC P-384 or Ed25519 public key"))
    }
}

/// PEM text for `der` under `label` (e.g. `PUBLIC KEY`): base64 in lines
/// of 64 characters, as OpenSSL writes it.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside a (possibly mangled) PEM public key.
fn pem_public_key_der(pem: &str) -> Result<Vec<u8>, PemKeyError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const STANDARD_LENIENT_PADDING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    if pem.len() > MAX_PEM_BYTES {
        return Err(PemKeyError::TooLarge);
    }
    let mut text = pem.trim();
    for quote in ['"', '\''] {
        if text.len() >= 2 && text.starts_with(quote) && text.ends_with(quote) {
            text = text[1..text.len() - 1].trim();
        }
    }
    // Literal escapes, as a multi-line value squeezed into one line makes.
    let text = text.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\\r", "\n");
    const BEGIN: &str = "-----BEGIN ";
    const DASHES: &str = "-----";
    let mut blocks = text.match_indices(BEGIN);
    let Some((start, _)) = blocks.next() else {
        return Err(PemKeyError::NoBlock);
    };
    let after_begin = &text[start + BEGIN.len()..];
    let label_end = after_begin.find(DASHES).ok_or(PemKeyError::NoBlock)?;
    let label = after_begin[..label_end].trim();
    if label.contains("PRIVATE KEY") {
        return Err(PemKeyError::PrivateKey);
    }
    if blocks.next().is_some() {
        return Err(PemKeyError::SeveralBlocks);
    }
    match label {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
        l if l.contains("CERTIFICATE") => return Err(PemKeyError::Certificate),
        l => return Err(PemKeyError::WrongLabel(truncate(l, 32))),
    }
    let body_and_end = &after_begin[label_end + DASHES.len()..];
    let end_marker = format!("-----END {label}-----");
    let body_end = body_and_end.find(&end_marker).ok_or_else(|| PemKeyError::Unterminated(label.to_owned()))?;
    let body: String = body_and_end[..body_end].chars().filter(|c| !c.is_whitespace()).collect();
    if body.is_empty() {
        return Err(PemKeyError::NotBase64);
    }
    STANDARD_LENIENT_PADDING.decode(body.as_bytes()).map_err(|_| PemKeyError::NotBase64)
}

fn key_from_raw(raw: &RawJwk) -> Result<VerificationKey, SkipReason> {
    if let Some(u) = &raw.use_
        && u != "sig"
    {
        return Err(SkipReason::NotForSignatures(truncate(u, 16)));
    }
    if let Some(ops) = &raw.key_ops
        && !ops.iter().any(|o| o == "verify")
    {
        return Err(SkipReason::NoVerifyOp);
    }
    let kty = raw.kty.as_deref().ok_or(SkipReason::Invalid("kty is missing"))?;
    let family = match (kty, raw.crv.as_deref()) {
        ("RSA", _) => KeyFamily::Rsa,
        ("EC", Some("P-256")) => KeyFamily::EcP256,
        ("EC", Some("P-384")) => KeyFamily::EcP384,
        ("OKP", Some("Ed25519")) => KeyFamily::Ed25519,
        ("oct", _) => return Err(SkipReason::Symmetric),
        (kty, crv) => {
            let what = match crv {
                Some(c) => format!("{} {}", truncate(kty, 16), truncate(c, 16)),
                None => truncate(kty, 16),
            };
            return Err(SkipReason::UnsupportedType(what));
        }
    };
    let jwk_alg = match raw.alg.as_deref() {
        None => None,
        Some(name) => match Algorithm::classify(name) {
            AlgClass::Supported(a) if a.family() == family => Some(a),
            _ => return Err(SkipReason::UnsupportedAlg(truncate(name, 16))),
        },
    };
    let candidates = Algorithm::ALL.into_iter().filter(|a| a.family() == family && jwk_alg.is_none_or(|j| j == *a));

    let kid = raw.kid.as_deref().map(Box::from);
    match family {
        KeyFamily::Rsa => {
            let n = b64(raw.n.as_deref(), "n")?;
            let e = b64(raw.e.as_deref(), "e")?;
            rsa_key(kid, jwk_alg, &n, &e, candidates)
        }
        KeyFamily::EcP256 | KeyFamily::EcP384 => {
            let (len, alg, verify_alg): (usize, Algorithm, &'static sig::EcdsaVerificationAlgorithm) =
                if family == KeyFamily::EcP256 {
                    (32, Algorithm::ES256, &sig::ECDSA_P256_SHA256_FIXED)
                } else {
                    (48, Algorithm::ES384, &sig::ECDSA_P384_SHA384_FIXED)
                };
            let x = b64(raw.x.as_deref(), "x")?;
            let y = b64(raw.y.as_deref(), "y")?;
            if x.len() != len || y.len() != len {
                return Err(SkipReason::Invalid("EC coordinates have the wrong length for the curve"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            // Validates that the point is on the curve.
            let parsed = ParsedPublicKey::new(verify_alg, &point)
                .map_err(|_| SkipReason::Invalid("EC point is not on the curve"))?;
            Ok(VerificationKey {
                kid,
                family,
                jwk_alg,
                material: point.into(),
                rsa_bits: 0,
                verifiers: vec![(alg, parsed)],
            })
        }
        KeyFamily::Ed25519 => {
            let x = b64(raw.x.as_deref(), "x")?;
            if x.len() != 32 {
                return Err(SkipReason::Invalid("Ed25519 key is not 32 bytes"));
            }
            let parsed =
                ParsedPublicKey::new(&sig::ED25519, &x).map_err(|_| SkipReason::Invalid("Ed25519 key rejected"))?;
            Ok(VerificationKey {
                kid,
                family,
                jwk_alg,
                material: x.into(),
                rsa_bits: 0,
                verifiers: vec![(Algorithm::EdDSA, parsed)],
            })
        }
    }
}

/// An RSA key from its modulus and exponent (big-endian, leading zeros
/// allowed), able to verify each of `candidates`.
fn rsa_key(
    kid: Option<Box<str>>,
    jwk_alg: Option<Algorithm>,
    n: &[u8],
    e: &[u8],
    candidates: impl Iterator<Item = Algorithm>,
) -> Result<VerificationKey, SkipReason> {
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    if n.is_empty() || e.is_empty() {
        return Err(SkipReason::Invalid("n or e is zero"));
    }
    let bits = n.len() * 8 - n[0].leading_zeros() as usize;
    if bits < MIN_RSA_BITS {
        return Err(SkipReason::WeakRsa(bits));
    }
    if n.len() > 1024 {
        return Err(SkipReason::Invalid("RSA modulus above 8192 bits"));
    }
    let components = RsaPublicKeyComponents { n, e };
    let mut verifiers = Vec::new();
    for alg in candidates {
        let params = alg.rsa_parameters().ok_or(SkipReason::Invalid("internal: no RSA parameters"))?;
        let parsed = components.to_parsed_public_key(params).map_err(|_| SkipReason::Invalid("RSA key rejected"))?;
        verifiers.push((alg, parsed));
    }
    let mut material = n.to_vec();
    material.extend_from_slice(e);
    Ok(VerificationKey { kid, family: KeyFamily::Rsa, jwk_alg, material: material.into(), rsa_bits: bits, verifiers })
}

fn b64(value: Option<&str>, _name: &'static str) -> Result<Vec<u8>, SkipReason> {
    let value = value.ok_or(SkipReason::Invalid("a required key parameter is missing"))?;
    // Some JWKS publishers pad; accept it, the value is not a token.
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| SkipReason::Invalid("a key parameter is not base64url"))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// At most `max` characters of `s`, with control characters escaped: safe
/// to put in a log line or a message.
pub fn truncate(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 3);
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classify_names() {
        assert_eq!(Algorithm::classify("RS256"), AlgClass::Supported(Algorithm::RS256));
        assert_eq!(Algorithm::classify("EdDSA"), AlgClass::Supported(Algorithm::EdDSA));
        assert_eq!(Algorithm::classify("none"), AlgClass::None);
        assert_eq!(Algorithm::classify("NoNe"), AlgClass::None);
        assert_eq!(Algorithm::classify("HS256"), AlgClass::Symmetric);
        assert_eq!(Algorithm::classify("hs512"), AlgClass::Symmetric);
        assert_eq!(Algorithm::classify("rs256"), AlgClass::Unknown);
        assert_eq!(Algorithm::classify("ES512"), AlgClass::Unknown);
        assert_eq!(Algorithm::classify(""), AlgClass::Unknown);
    }

    #[test]
    fn algorithm_set_round_trip() {
        let s: AlgorithmSet = [Algorithm::RS256, Algorithm::ES256].into_iter().collect();
        assert!(s.contains(Algorithm::RS256) && s.contains(Algorithm::ES256));
        assert!(!s.contains(Algorithm::PS256));
        assert_eq!(s.to_string(), "RS256, ES256");
        assert_eq!(AlgorithmSet::all().iter().count(), 9);
        assert!("HS256".parse::<Algorithm>().unwrap_err().contains("shared-secret"));
        assert!("none".parse::<Algorithm>().is_err());
    }

    #[test]
    fn skips_unusable_keys_without_failing_the_set() {
        let doc = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "enc"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "short", "key_ops": ["verify"]},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "weak"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "noverify", "key_ops": ["encrypt"]},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"}
        ]});
        let parsed = parse_jwks(doc.to_string().as_bytes(), &[]).unwrap();
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(parsed.keys[0].kid(), Some("ed"));
        let reasons: Vec<_> = parsed.skipped.iter().map(|s| s.reason.clone()).collect();
        assert_eq!(
            reasons,
            vec![
                SkipReason::Symmetric,
                SkipReason::NotForSignatures("enc".into()),
                SkipReason::UnsupportedType("EC P-521".into()),
                SkipReason::Invalid("EC coordinates have the wrong length for the curve"),
                SkipReason::WeakRsa(17),
                SkipReason::NoVerifyOp,
            ]
        );
    }

    #[test]
    fn refuses_documents_that_are_not_jwks() {
        assert!(matches!(parse_jwks(b"[]", &[]), Err(JwksError::NotJwks(_))));
        assert!(matches!(parse_jwks(b"{}", &[]), Err(JwksError::NotJwks(_))));
        assert!(matches!(parse_jwks(b"{\"keys\": []}", &[]), Err(JwksError::NoUsableKeys { skipped: 0 })));
        let many = json!({"keys": vec![json!({"kty": "oct"}); MAX_KEYS + 1]});
        assert_eq!(parse_jwks(many.to_string().as_bytes(), &[]).unwrap_err(), JwksError::TooManyKeys(101));
    }

    #[test]
    fn jwk_alg_must_fit_the_key_type() {
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "alg": "RS256",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(key_from_jwk_json(&ed).unwrap_err(), SkipReason::UnsupportedAlg("RS256".into()));
        let hs = json!({"kty": "OKP", "crv": "Ed25519", "alg": "HS256",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(key_from_jwk_json(&hs).unwrap_err(), SkipReason::UnsupportedAlg("HS256".into()));
    }

    #[test]
    fn truncate_escapes_and_cuts() {
        assert_eq!(truncate("abc", 2), "ab…");
        assert_eq!(truncate("a\nb", 10), "a\\nb");
    }

    mod pem {
        use super::super::*;
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::rsa::{KeyPair, KeySize};
        use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};

        fn rsa_pair() -> KeyPair {
            KeyPair::generate(KeySize::Rsa2048).unwrap()
        }

        fn spki_pem(pair: &KeyPair) -> String {
            to_pem("PUBLIC KEY", pair.public_key().as_der().unwrap().as_ref())
        }

        fn signs_and_verifies(pair: &KeyPair, key: &VerificationKey) -> bool {
            let mut sig = vec![0; pair.public_modulus_len()];
            pair.sign(&sig::RSA_PKCS1_SHA256, &SystemRandom::new(), b"msg", &mut sig).unwrap();
            key.verify(Algorithm::RS256, b"msg", &sig) && !key.verify(Algorithm::RS256, b"other", &sig)
        }

        #[test]
        fn a_clean_pem_verifies_signatures_of_its_key() {
            let pair = rsa_pair();
            let key = VerificationKey::from_public_key_pem(&spki_pem(&pair), Some("ins_1")).unwrap();
            assert_eq!(key.kid(), Some("ins_1"));
            assert_eq!(key.family(), KeyFamily::Rsa);
            assert_eq!(key.rsa_bits(), 2048);
            assert!(key.supports(Algorithm::RS256) && key.supports(Algorithm::PS256));
            assert!(!key.supports(Algorithm::ES256));
            assert!(signs_and_verifies(&pair, &key));
            // The same key as the JWK with the same n, e and kid.
            let public = pair.public_key();
            let jwk = serde_json::json!({"kty": "RSA", "kid": "ins_1",
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero())});
            assert!(key.same_key_as(&key_from_jwk_json(&jwk).unwrap()));
        }

        #[test]
        fn mangled_environment_variable_copies_are_accepted() {
            let pair = rsa_pair();
            let pem = spki_pem(&pair);
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            let variants = [
                // Literal \n escapes, quoted, as .env files and dashboards make them.
                format!("\"{}\"", pem.trim_end().replace('\n', "\\n")),
                format!("'{}'", pem.trim_end().replace('\n', "\\n")),
                // One line, line breaks turned into spaces.
                pem.trim_end().replace('\n', " "),
                // CRLF and indentation (YAML block scalars, TOML multi-line strings).
                pem.lines().map(|l| format!("    {l}\r\n")).collect(),
                // The body on one line.
                format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----"),
                // Literal \r\n escapes.
                pem.replace('\n', "\\r\\n"),
            ];
            for v in variants {
                let key = VerificationKey::from_public_key_pem(&v, None).unwrap_or_else(|e| panic!("{v:?}: {e}"));
                assert!(signs_and_verifies(&pair, &key), "{v:?}");
            }
        }

        #[test]
        fn pkcs1_rsa_public_keys_are_accepted() {
            let pair = rsa_pair();
            let pem = to_pem("RSA PUBLIC KEY", pair.public_key().as_ref());
            let key = VerificationKey::from_public_key_pem(&pem, None).unwrap();
            assert!(signs_and_verifies(&pair, &key));
        }

        #[test]
        fn ec_and_ed25519_keys_are_accepted() {
            let p256 = EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
            let pem = to_pem("PUBLIC KEY", p256.public_key().as_der().unwrap().as_ref());
            let key = VerificationKey::from_public_key_pem(&pem, None).unwrap();
            assert_eq!(key.family(), KeyFamily::EcP256);
            let signature = p256.sign(&SystemRandom::new(), b"msg").unwrap();
            assert!(key.verify(Algorithm::ES256, b"msg", signature.as_ref()));

            let p384 = EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
            let pem = to_pem("PUBLIC KEY", p384.public_key().as_der().unwrap().as_ref());
            assert_eq!(VerificationKey::from_public_key_pem(&pem, None).unwrap().family(), KeyFamily::EcP384);

            let ed = Ed25519KeyPair::generate().unwrap();
            let pem = to_pem("PUBLIC KEY", ed.public_key().as_der().unwrap().as_ref());
            let key = VerificationKey::from_public_key_pem(&pem, None).unwrap();
            assert_eq!(key.family(), KeyFamily::Ed25519);
            assert!(key.verify(Algorithm::EdDSA, b"msg", ed.sign(b"msg").as_ref()));
        }

        #[test]
        fn wrong_inputs_say_what_to_give_instead() {
            let pair = rsa_pair();
            let pem = spki_pem(&pair);
            let cases: Vec<(String, PemKeyError)> = vec![
                (String::new(), PemKeyError::NoBlock),
                ("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA".into(), PemKeyError::NoBlock),
                ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into(), PemKeyError::PrivateKey),
                (
                    "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----".into(),
                    PemKeyError::PrivateKey,
                ),
                ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----".into(), PemKeyError::Certificate),
                ("-----BEGIN FOO-----\nAAAA\n-----END FOO-----".into(), PemKeyError::WrongLabel("FOO".into())),
                (format!("{pem}{pem}"), PemKeyError::SeveralBlocks),
                (pem.replace("-----END PUBLIC KEY-----", ""), PemKeyError::Unterminated("PUBLIC KEY".into())),
                ("-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----".into(), PemKeyError::NotBase64),
                ("-----BEGIN PUBLIC KEY-----\n\n-----END PUBLIC KEY-----".into(), PemKeyError::NotBase64),
                (
                    "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----".into(),
                    PemKeyError::Key(SkipReason::Invalid("not an RSA, EC P-256, EC P-384 or Ed25519 public key")),
                ),
                (format!("{pem}{}", " ".repeat(MAX_PEM_BYTES)), PemKeyError::TooLarge),
            ];
            for (input, want) in cases {
                assert_eq!(VerificationKey::from_public_key_pem(&input, None).unwrap_err(), want, "{input:.60?}");
            }
        }

        #[test]
        fn weak_rsa_keys_are_refused() {
            let n = [0xC3u8; 128];
            let der = aws_lc_rs::rsa::PublicKeyComponents { n: &n[..], e: &[1u8, 0, 1][..] }.as_der().unwrap();
            let pem = to_pem("PUBLIC KEY", der.as_ref());
            assert_eq!(
                VerificationKey::from_public_key_pem(&pem, None).unwrap_err(),
                PemKeyError::Key(SkipReason::WeakRsa(1024))
            );
        }
    }
}
