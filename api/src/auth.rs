//! Bearer tokens, roles and subjects (docs/design.md §5 "Auth").
//!
//! Two kinds of token, both presented as `Authorization: Bearer <token>`:
//!
//! - **Opaque tokens** configured by `STRATA_TOKENS` (or `--tokens`, or
//!   `tokens` in `strata.toml`): `role[/subject]:token[@RFC3339 expiry],…`.
//!   A client entry must name its customer (`client/c-1:…`); an auditor or
//!   operator may name who it is (the actor in the log). Only the SHA-256 of
//!   each token is kept in memory, and a presented token is looked up by its
//!   digest, so no secret is ever compared byte by byte. With none configured
//!   (and no JWT keys), `strata serve` makes one random development token
//!   per role and prints them (`token <role>: <token>`); the development
//!   client acts for customer `c-1`, as the quick start does.
//! - **JWTs** when `STRATA_JWT_SECRET` (HS256, 32+ bytes) or
//!   `STRATA_JWT_JWKS` (a JWKS file of RS256/ES256 public keys) is set,
//!   verified with `jsonwebtoken`: the signature, `exp` (required, and a
//!   date: one past year 262143 would never close a connection), `nbf` when
//!   present, `sub` (required: the customer of a client), the role (required:
//!   `client`, `auditor` or `operator`, in the claim `STRATA_JWT_ROLE_CLAIM`
//!   names, default `role`, so that a shared identity provider's own `role`
//!   claim grants nothing here), and `iss`/`aud` when `STRATA_JWT_ISSUER` /
//!   `STRATA_JWT_AUDIENCE` are set; with a JWKS both are required (the
//!   provider's keys sign tokens for other services too). Unsigned (`alg:
//!   none`), wrongly signed, expired, not yet valid or incomplete tokens are
//!   refused like any unknown token.
//!
//! What each role may do is [`Role::may`]: clients place, cancel and read
//! for their own customer only; auditors read the read models and the log
//! and write nothing; operators may do everything (restocking included).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Places and follows its own customer's orders.
    Client,
    /// Reads history; writes nothing.
    Auditor,
    /// Runs the system: every operation.
    Operator,
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read the read models (`order`, `orders`, `stock`, `projections`,
    /// `orderUpdated`; a client only its customer's orders).
    Read,
    /// Send a customer's commands (`placeOrder`, `cancelOrder`; a client
    /// only for its customer).
    Write,
    /// Read the log itself (`streamEvents`, `globalEvents`, `orderAt`,
    /// `stuckSagas`).
    Audit,
    /// Operate the warehouse, projections and sagas (`restock`,
    /// `rebuildProjection`, `pauseProjection`, `resumeProjection`,
    /// `resumeSaga`).
    Operate,
}

impl Role {
    /// Every role, in the order dev tokens are printed.
    pub const ALL: [Role; 3] = [Role::Client, Role::Auditor, Role::Operator];

    /// Its name in tokens and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
        }
    }

    /// Parses a role name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == text)
    }

    /// Whether this role may do what `permission` guards.
    pub fn may(self, permission: Permission) -> bool {
        matches!(
            (self, permission),
            (Role::Operator, _) | (_, Permission::Read) | (Role::Client, Permission::Write) | (Role::Auditor, Permission::Audit)
        )
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling: a role, and for a client the customer it acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its role.
    pub role: Role,
    /// The customer of a client; the name of an auditor or operator, if any.
    pub subject: Option<String>,
    /// When its token expires (connections close then).
    pub expires: Option<DateTime<Utc>>,
}

impl Caller {
    /// The customer a client acts for (`None` for auditors and operators,
    /// who are not limited to one customer).
    pub fn customer(&self) -> Option<&str> {
        match self.role {
            Role::Client => Some(self.subject.as_deref().unwrap_or_default()),
            _ => None,
        }
    }
}

/// Why a request is not authenticated. The message never says which tokens exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (or connection-init token).
    #[error("missing bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    /// Not `Bearer <token>`.
    #[error("malformed Authorization header: expected `Bearer <token>`")]
    Malformed,
    /// Not a configured token, or a JWT that fails verification.
    #[error("invalid token")]
    Invalid,
    /// A token past its expiry.
    #[error("token expired")]
    Expired,
}

#[derive(Debug, Clone)]
struct Grant {
    role: Role,
    subject: Option<String>,
    expires: Option<DateTime<Utc>>,
}

/// Where JWTs are verified: keys, and the issuer and audience to require.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtSettings {
    /// The HS256 secret (`STRATA_JWT_SECRET`, 32+ bytes).
    pub secret: Option<String>,
    /// A JWKS file of RS256/ES256 public keys (`STRATA_JWT_JWKS`).
    pub jwks: Option<std::path::PathBuf>,
    /// The `iss` to require (`STRATA_JWT_ISSUER`).
    pub issuer: Option<String>,
    /// The `aud` to require (`STRATA_JWT_AUDIENCE`).
    pub audience: Option<String>,
    /// The claim holding the role (`STRATA_JWT_ROLE_CLAIM`; `None`: `role`).
    pub role_claim: Option<String>,
}

impl JwtSettings {
    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        self.secret.is_some() || self.jwks.is_some()
    }
}

/// A verification key and the one algorithm it verifies.
#[derive(Clone)]
struct JwtKey {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

#[derive(Clone)]
struct Jwt {
    keys: Vec<JwtKey>,
    issuer: Option<String>,
    audience: Option<String>,
    role_claim: String,
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt").field("keys", &self.keys.len()).field("issuer", &self.issuer).field("audience", &self.audience).finish()
    }
}

/// The claims a Strata JWT carries: `sub`, `exp`, and the role in the
/// configured claim (any other claim is kept for it).
#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// Shortest HS256 secret.
pub const MIN_JWT_SECRET_LEN: usize = 32;

impl Jwt {
    fn load(settings: &JwtSettings) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        if let Some(secret) = &settings.secret {
            if secret.len() < MIN_JWT_SECRET_LEN {
                bail!("STRATA_JWT_SECRET must have at least {MIN_JWT_SECRET_LEN} bytes");
            }
            keys.push(JwtKey { id: None, algorithm: Algorithm::HS256, key: DecodingKey::from_secret(secret.as_bytes()) });
        }
        if let Some(path) = &settings.jwks {
            // Public keys come from an identity provider that signs tokens
            // for other services too: a token must name this one.
            if settings.issuer.is_none() || settings.audience.is_none() {
                bail!(
                    "STRATA_JWT_JWKS needs STRATA_JWT_ISSUER and STRATA_JWT_AUDIENCE: an identity provider's keys also sign tokens meant for other services"
                );
            }
            keys.extend(jwks(path)?);
        }
        let role_claim = settings.role_claim.clone().unwrap_or_else(|| "role".to_owned());
        Ok(Self { keys, issuer: settings.issuer.clone(), audience: settings.audience.clone(), role_claim })
    }

    fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Caller, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let candidates = self
            .keys
            .iter()
            .filter(|key| key.algorithm == header.alg && (header.kid.is_none() || key.id.is_none() || key.id == header.kid));
        let mut expired = false;
        for key in candidates {
            let mut validation = Validation::new(key.algorithm);
            validation.set_required_spec_claims(&["exp", "sub"]);
            validation.leeway = 30;
            // A token not valid yet is refused (checked when present).
            validation.validate_nbf = true;
            match &self.audience {
                Some(audience) => {
                    validation.set_audience(&[audience]);
                    validation.required_spec_claims.insert("aud".into());
                }
                None => validation.validate_aud = false,
            }
            if let Some(issuer) = &self.issuer {
                validation.set_issuer(&[issuer]);
                validation.required_spec_claims.insert("iss".into());
            }
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    let role = claims.other.get(&self.role_claim).and_then(serde_json::Value::as_str).and_then(Role::parse);
                    let role = role.ok_or(AuthError::Invalid)?;
                    if claims.sub.trim().is_empty() || claims.sub.chars().count() > 128 || claims.sub.chars().any(char::is_control) {
                        return Err(AuthError::Invalid);
                    }
                    // An `exp` past what a date can hold would never close
                    // the token's connections: refused.
                    let expires = DateTime::from_timestamp(claims.exp, 0).ok_or(AuthError::Invalid)?;
                    if expires <= now - chrono::Duration::seconds(validation.leeway as i64) {
                        return Err(AuthError::Expired);
                    }
                    let expires = Some(expires);
                    return Ok(Caller { role, subject: Some(claims.sub), expires });
                }
                Err(error) if matches!(error.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => expired = true,
                Err(_) => {}
            }
        }
        Err(if expired { AuthError::Expired } else { AuthError::Invalid })
    }
}

/// The RS256 and ES256 keys of a JWKS file.
fn jwks(path: &Path) -> anyhow::Result<Vec<JwtKey>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("STRATA_JWT_JWKS: cannot read {}", path.display()))?;
    let set: JwkSet = serde_json::from_str(&text).with_context(|| format!("STRATA_JWT_JWKS: {} is not a JWKS document", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), _) | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (Some(KeyAlgorithm::ES256), _) | (None, AlgorithmParameters::EllipticCurve(_)) => Algorithm::ES256,
            (other, _) => bail!("STRATA_JWT_JWKS: key {:?} uses {other:?}; only RS256 and ES256 are accepted", jwk.common.key_id),
        };
        let key = DecodingKey::from_jwk(jwk).with_context(|| format!("STRATA_JWT_JWKS: key {:?} does not load", jwk.common.key_id))?;
        keys.push(JwtKey { id: jwk.common.key_id.clone(), algorithm, key });
    }
    if keys.is_empty() {
        bail!("STRATA_JWT_JWKS: {} holds no key", path.display());
    }
    Ok(keys)
}

/// The accepted tokens: opaque ones by digest, and JWT keys.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    grants: HashMap<[u8; 32], Grant>,
    jwt: Option<Jwt>,
}

/// Shortest configured token: guessing must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

/// The customer the development client token acts for (the quick start's).
pub const DEVELOPMENT_CUSTOMER: &str = "c-1";

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses `role[/subject]:token[@RFC3339 expiry],…` (a client names its
    /// customer: `client/c-1:…`).
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let mut tokens = Tokens::default();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((who, rest)) = entry.split_once(':') else {
                bail!("STRATA_TOKENS: expected role[/subject]:token[@expiry], got an entry without a role");
            };
            let (role, subject) = match who.split_once('/') {
                Some((role, subject)) => (role.trim(), Some(subject.trim().to_owned())),
                None => (who.trim(), None),
            };
            let role =
                Role::parse(role).with_context(|| format!("STRATA_TOKENS: unknown role {role:?}; expected client, auditor or operator"))?;
            match &subject {
                None if role == Role::Client => bail!("STRATA_TOKENS: a client token names its customer: client/<customer id>:<token>"),
                Some(subject) if subject.is_empty() || subject.chars().count() > 128 || subject.chars().any(char::is_control) => {
                    bail!("STRATA_TOKENS: the subject of a {role} token must have 1 to 128 characters, no control character")
                }
                _ => {}
            }
            let (token, expires) = match rest.split_once('@') {
                Some((token, expiry)) => {
                    let expiry = DateTime::parse_from_rfc3339(expiry.trim())
                        .with_context(|| format!("STRATA_TOKENS: the expiry of a {role} token is not an RFC 3339 time"))?;
                    (token, Some(expiry.with_timezone(&Utc)))
                }
                None => (rest, None),
            };
            let token = token.trim();
            if token.len() < MIN_TOKEN_LEN || !token.chars().all(|c| c.is_ascii_graphic()) {
                bail!("STRATA_TOKENS: a {role} token must have at least {MIN_TOKEN_LEN} printable ASCII characters");
            }
            // The same token twice would leave only its last grant: an
            // operator line pasted over a client's silently changes who it is.
            if tokens.grants.contains_key(&digest(token)) {
                bail!("STRATA_TOKENS lists the same token twice (a {role} entry repeats an earlier token); each token must be unique");
            }
            tokens.insert(token, role, subject, expires);
        }
        if tokens.grants.is_empty() {
            bail!("STRATA_TOKENS is set but lists no token");
        }
        Ok(tokens)
    }

    /// One fresh random token per role, returned for printing; the client
    /// acts for [`DEVELOPMENT_CUSTOMER`].
    pub fn development() -> (Self, Vec<(Role, String)>) {
        let mut tokens = Tokens::default();
        let mut printed = Vec::new();
        for role in Role::ALL {
            let mut bytes = [0_u8; 24];
            rand::rng().fill_bytes(&mut bytes);
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let token = format!("dev-{role}-{hex}");
            let subject = (role == Role::Client).then(|| DEVELOPMENT_CUSTOMER.to_owned());
            tokens.insert(&token, role, subject, None);
            printed.push((role, token));
        }
        (tokens, printed)
    }

    /// Adds JWT verification (see the module docs).
    pub fn with_jwt(mut self, settings: &JwtSettings) -> anyhow::Result<Self> {
        if settings.enabled() {
            self.jwt = Some(Jwt::load(settings)?);
        }
        Ok(self)
    }

    /// Accepts `token` for `role` (and `subject`) until `expires`.
    pub fn insert(&mut self, token: &str, role: Role, subject: Option<String>, expires: Option<DateTime<Utc>>) {
        self.grants.insert(digest(token), Grant { role, subject, expires });
    }

    /// Who a presented token speaks for.
    pub fn check(&self, token: &str, now: DateTime<Utc>) -> Result<Caller, AuthError> {
        if let Some(grant) = self.grants.get(&digest(token)) {
            return match grant.expires {
                Some(expires) if expires <= now => Err(AuthError::Expired),
                _ => Ok(Caller { role: grant.role, subject: grant.subject.clone(), expires: grant.expires }),
            };
        }
        match &self.jwt {
            // A JWT is three base64url parts joined by dots.
            Some(jwt) if token.split('.').count() == 3 => jwt.verify(token, now),
            _ => Err(AuthError::Invalid),
        }
    }

    /// Who an `Authorization` header's value (`Bearer <token>`) speaks for.
    pub fn authenticate(&self, header: Option<&str>, now: DateTime<Utc>) -> Result<Caller, AuthError> {
        let header = header.ok_or(AuthError::Missing)?.trim();
        let (scheme, token) = header.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Malformed);
        }
        self.check(token.trim(), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn role(result: Result<Caller, AuthError>) -> Result<Role, AuthError> {
        result.map(|caller| caller.role)
    }

    #[test]
    fn configured_tokens_map_to_roles_and_subjects_and_expire() {
        let tokens = Tokens::parse(
            "client/c-1:client-token-0123456789, auditor:auditor-token-012345@2000-01-01T00:00:00Z, operator/ops-ann:operator-token-01234",
        )
        .unwrap();
        let now = Utc::now();
        let client = tokens.authenticate(Some("Bearer client-token-0123456789"), now).unwrap();
        assert_eq!((client.role, client.customer()), (Role::Client, Some("c-1")));
        assert_eq!(role(tokens.authenticate(Some("bearer  client-token-0123456789 "), now)), Ok(Role::Client));
        let operator = tokens.check("operator-token-01234", now).unwrap();
        assert_eq!((operator.subject.as_deref(), operator.customer()), (Some("ops-ann"), None));
        assert_eq!(role(tokens.authenticate(Some("Bearer auditor-token-012345"), now)), Err(AuthError::Expired));
        assert_eq!(role(tokens.authenticate(Some("Bearer nope-nope-nope-nope"), now)), Err(AuthError::Invalid));
        assert_eq!(role(tokens.authenticate(Some("Basic abc"), now)), Err(AuthError::Malformed));
        assert_eq!(role(tokens.authenticate(Some("Bearer"), now)), Err(AuthError::Malformed));
        assert_eq!(role(tokens.authenticate(None, now)), Err(AuthError::Missing));
    }

    #[test]
    fn bad_token_lists_are_refused_with_the_reason() {
        for (spec, says) in [
            ("client/c-1:short", "at least 16"),
            ("client:aaaaaaaaaaaaaaaaaaaa", "names its customer"),
            ("client/:aaaaaaaaaaaaaaaaaaaa", "1 to 128"),
            ("admin:aaaaaaaaaaaaaaaaaaaa", "unknown role"),
            ("aaaaaaaaaaaaaaaaaaaa", "without a role"),
            ("operator:aaaaaaaaaaaaaaaaaaaa@tomorrow", "RFC 3339"),
            (" , ", "lists no token"),
            ("client/c-1:aaaaaaaaaaaaaaaaaaaa,operator:aaaaaaaaaaaaaaaaaaaa", "same token twice"),
        ] {
            let err = Tokens::parse(spec).unwrap_err().to_string();
            assert!(err.contains(says), "{spec}: {err}");
        }
    }

    #[test]
    fn development_tokens_are_distinct_and_each_grants_its_role() {
        let (tokens, printed) = Tokens::development();
        assert_eq!(printed.len(), 3);
        for (role, token) in &printed {
            let caller = tokens.check(token, Utc::now()).unwrap();
            assert_eq!(caller.role, *role);
            assert_eq!(caller.customer(), (*role == Role::Client).then_some(DEVELOPMENT_CUSTOMER));
        }
        assert_ne!(printed[0].1, printed[1].1);
    }

    #[test]
    fn roles_grant_what_the_contract_says() {
        use Permission::*;
        assert!(Role::Client.may(Read) && Role::Client.may(Write) && !Role::Client.may(Audit) && !Role::Client.may(Operate));
        assert!(Role::Auditor.may(Read) && Role::Auditor.may(Audit) && !Role::Auditor.may(Write) && !Role::Auditor.may(Operate));
        assert!([Read, Write, Audit, Operate].into_iter().all(|p| Role::Operator.may(p)));
    }

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
    /// A P-256 key made for these tests only (PKCS#8 DER), and its public half.
    const EC_PRIVATE_PKCS8: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggBaRyCDeWa1RVuN8JffJpkX80Afn4BJrzoj4d5xAUtuhRANCAASNqSyYIz1vrhXbWEAKHbMh2nEmOFHfQqHa+l8sY/MOCqmcfjkDQF1vjSh6nB7W+yKdwqneMZoDwuY2CNXkWjNX";
    const EC_X: &str = "jaksmCM9b64V21hACh2zIdpxJjhR30Kh2vpfLGPzDgo";
    const EC_Y: &str = "qZx-OQNAXW-NKHqcHtb7Ip3Cqd4xmgPC5jYI1eRaM1c";

    fn hs256(claims: serde_json::Value, secret: &str) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn es256(claims: serde_json::Value, kid: &str) -> String {
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD.decode(EC_PRIVATE_PKCS8).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        encode(&header, &claims, &EncodingKey::from_ec_der(&der)).unwrap()
    }

    fn in_an_hour() -> i64 {
        (Utc::now() + chrono::Duration::hours(1)).timestamp()
    }

    #[test]
    fn hs256_jwts_carry_role_and_subject_and_every_bad_one_is_refused() {
        let settings = JwtSettings { secret: Some(SECRET.into()), issuer: Some("https://idp.example".into()), ..JwtSettings::default() };
        let tokens = Tokens::default().with_jwt(&settings).unwrap();
        let now = Utc::now();
        let good = json!({ "sub": "c-7", "role": "client", "exp": in_an_hour(), "iss": "https://idp.example" });
        let caller = tokens.check(&hs256(good.clone(), SECRET), now).unwrap();
        assert_eq!((caller.role, caller.customer()), (Role::Client, Some("c-7")));
        assert!(caller.expires.is_some());
        let mut expired = good.clone();
        expired["exp"] = json!((now - chrono::Duration::hours(2)).timestamp());
        assert_eq!(role(tokens.check(&hs256(expired, SECRET), now)), Err(AuthError::Expired));
        assert_eq!(role(tokens.check(&hs256(good.clone(), "another-secret-of-at-least-32-bytes!!"), now)), Err(AuthError::Invalid));
        for missing in ["sub", "role", "exp", "iss"] {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().remove(missing);
            assert_eq!(role(tokens.check(&hs256(claims, SECRET), now)), Err(AuthError::Invalid), "without {missing}");
        }
        let mut wrong_issuer = good.clone();
        wrong_issuer["iss"] = json!("https://evil.example");
        assert_eq!(role(tokens.check(&hs256(wrong_issuer, SECRET), now)), Err(AuthError::Invalid));
        let mut admin = good.clone();
        admin["role"] = json!("admin");
        assert_eq!(role(tokens.check(&hs256(admin, SECRET), now)), Err(AuthError::Invalid));
        // alg none: an unsigned token with the same claims.
        use base64::Engine;
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let unsigned = format!("{}.{}.", b64(&json!({ "alg": "none", "typ": "JWT" })), b64(&good));
        assert_eq!(role(tokens.check(&unsigned, now)), Err(AuthError::Invalid));
        // An HS256 token whose signature was made with the secret but whose
        // header claims ES256 is not verified with the secret.
        let forged = {
            let signed = hs256(good, SECRET);
            let parts: Vec<&str> = signed.split('.').collect();
            format!("{}.{}.{}", b64(&json!({ "alg": "ES256", "typ": "JWT" })), parts[1], parts[2])
        };
        assert_eq!(role(tokens.check(&forged, now)), Err(AuthError::Invalid));
        assert!(Tokens::default().with_jwt(&JwtSettings { secret: Some("short".into()), ..JwtSettings::default() }).is_err());
    }

    #[test]
    fn an_audience_when_configured_is_required_and_must_match() {
        let settings = JwtSettings { secret: Some(SECRET.into()), audience: Some("strata".into()), ..JwtSettings::default() };
        let tokens = Tokens::default().with_jwt(&settings).unwrap();
        let now = Utc::now();
        let good = json!({ "sub": "ann", "role": "operator", "exp": in_an_hour(), "aud": "strata" });
        assert_eq!(role(tokens.check(&hs256(good.clone(), SECRET), now)), Ok(Role::Operator));
        let mut listed = good.clone();
        listed["aud"] = json!(["billing", "strata"]);
        assert_eq!(role(tokens.check(&hs256(listed, SECRET), now)), Ok(Role::Operator), "one of several audiences");
        let mut other = good.clone();
        other["aud"] = json!("billing");
        assert_eq!(role(tokens.check(&hs256(other, SECRET), now)), Err(AuthError::Invalid));
        let mut none = good;
        none.as_object_mut().unwrap().remove("aud");
        assert_eq!(role(tokens.check(&hs256(none, SECRET), now)), Err(AuthError::Invalid));
    }

    #[test]
    fn es256_jwts_verify_against_a_jwks_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let jwks = json!({ "keys": [{ "kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "key-1", "alg": "ES256", "use": "sig" }] });
        std::fs::write(&path, jwks.to_string()).unwrap();
        let settings = JwtSettings {
            jwks: Some(path.clone()),
            audience: Some("strata".into()),
            issuer: Some("https://idp.example".into()),
            ..JwtSettings::default()
        };
        let tokens = Tokens::default().with_jwt(&settings).unwrap();
        // A JWKS without an issuer or an audience to require is refused.
        for partial in [JwtSettings { issuer: None, ..settings.clone() }, JwtSettings { audience: None, ..settings.clone() }] {
            let error = Tokens::default().with_jwt(&partial).unwrap_err().to_string();
            assert!(error.contains("STRATA_JWT_ISSUER and STRATA_JWT_AUDIENCE"), "{error}");
        }
        let now = Utc::now();
        let claims = json!({ "sub": "ops", "role": "operator", "exp": in_an_hour(), "aud": "strata", "iss": "https://idp.example" });
        assert_eq!(role(tokens.check(&es256(claims.clone(), "key-1"), now)), Ok(Role::Operator));
        assert_eq!(role(tokens.check(&es256(claims.clone(), "key-2"), now)), Err(AuthError::Invalid), "unknown key id");
        let mut other_audience = claims;
        other_audience["aud"] = json!("someone-else");
        assert_eq!(role(tokens.check(&es256(other_audience, "key-1"), now)), Err(AuthError::Invalid));
        // HS256 tokens are not accepted when only a JWKS is configured.
        let hs =
            hs256(json!({ "sub": "ops", "role": "operator", "exp": in_an_hour(), "aud": "strata", "iss": "https://idp.example" }), SECRET);
        assert_eq!(role(tokens.check(&hs, now)), Err(AuthError::Invalid));
    }

    #[test]
    fn the_role_comes_from_the_configured_claim_only() {
        let claim = "https://strata.example/role";
        let settings = JwtSettings { secret: Some(SECRET.into()), role_claim: Some(claim.into()), ..JwtSettings::default() };
        let tokens = Tokens::default().with_jwt(&settings).unwrap();
        let now = Utc::now();
        let ours = json!({ "sub": "ann", claim: "auditor", "role": "operator", "exp": in_an_hour() });
        assert_eq!(role(tokens.check(&hs256(ours, SECRET), now)), Ok(Role::Auditor), "the generic role claim is not read");
        let generic = json!({ "sub": "ann", "role": "operator", "exp": in_an_hour() });
        assert_eq!(role(tokens.check(&hs256(generic, SECRET), now)), Err(AuthError::Invalid), "only the generic claim");
        let not_a_string = json!({ "sub": "ann", claim: ["operator"], "exp": in_an_hour() });
        assert_eq!(role(tokens.check(&hs256(not_a_string, SECRET), now)), Err(AuthError::Invalid));
    }

    #[test]
    fn a_token_not_valid_yet_or_with_an_exp_no_date_holds_is_refused() {
        let settings = JwtSettings { secret: Some(SECRET.into()), ..JwtSettings::default() };
        let tokens = Tokens::default().with_jwt(&settings).unwrap();
        let now = Utc::now();
        let good = json!({ "sub": "c-1", "role": "client", "exp": in_an_hour() });
        let mut later = good.clone();
        later["nbf"] = json!((now + chrono::Duration::minutes(10)).timestamp());
        assert_eq!(role(tokens.check(&hs256(later, SECRET), now)), Err(AuthError::Invalid), "nbf ten minutes ahead");
        let mut started = good.clone();
        started["nbf"] = json!((now - chrono::Duration::minutes(1)).timestamp());
        assert_eq!(role(tokens.check(&hs256(started, SECRET), now)), Ok(Role::Client));
        let mut forever = good;
        forever["exp"] = json!(10_000_000_000_000_i64);
        assert_eq!(role(tokens.check(&hs256(forever, SECRET), now)), Err(AuthError::Invalid), "an exp past any date");
    }
}
