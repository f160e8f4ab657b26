//! Bearer tokens and roles (docs/design.md §5 "Auth").
//!
//! Tokens are opaque: `STRATA_TOKENS` (or `--tokens`, or `tokens` in
//! `strata.toml`) lists `role:token` pairs, each optionally with an expiry
//! (`role:token@2027-01-01T00:00:00Z`). Only the SHA-256 of each token is
//! kept in memory, and a presented token is looked up by its digest, so no
//! secret is ever compared byte by byte. With none configured, `strata
//! serve` makes one random development token per role and prints them
//! (`token <role>: <token>`): no request is served without a token, even
//! on a laptop.
//!
//! What each role may do is [`Role::may`]: clients place, cancel and
//! restock and read the read models; auditors read the read models and the
//! log (`streamEvents`, `globalEvents`, `orderAt`) and write nothing;
//! operators may do everything, including rebuilding and pausing
//! projections.

use std::collections::HashMap;
use std::fmt;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Places and follows orders.
    Client,
    /// Reads history; writes nothing.
    Auditor,
    /// Runs the system: every operation.
    Operator,
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read the read models (`order`, `orders`, `stock`, `projections`, `orderUpdated`).
    Read,
    /// Send commands (`placeOrder`, `cancelOrder`, `restock`).
    Write,
    /// Read the log itself (`streamEvents`, `globalEvents`, `orderAt`,
    /// `stuckSagas`).
    Audit,
    /// Operate projections and sagas (`rebuildProjection`,
    /// `pauseProjection`, `resumeProjection`, `resumeSaga`).
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

/// Why a request is not authenticated. The message never says which tokens exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (or connection-init token).
    #[error("missing bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    /// Not `Bearer <token>`.
    #[error("malformed Authorization header: expected `Bearer <token>`")]
    Malformed,
    /// Not a configured token.
    #[error("invalid token")]
    Invalid,
    /// A configured token past its expiry.
    #[error("token expired")]
    Expired,
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    role: Role,
    expires: Option<DateTime<Utc>>,
}

/// The accepted tokens, by digest.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    grants: HashMap<[u8; 32], Grant>,
}

/// Shortest configured token: guessing must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses `role:token[@RFC3339 expiry],…`.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let mut tokens = Tokens::default();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((role, rest)) = entry.split_once(':') else {
                bail!("STRATA_TOKENS: expected role:token[@expiry], got an entry without a role");
            };
            let role = Role::parse(role.trim())
                .with_context(|| format!("STRATA_TOKENS: unknown role {role:?}; expected client, auditor or operator"))?;
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
            tokens.insert(token, role, expires);
        }
        if tokens.grants.is_empty() {
            bail!("STRATA_TOKENS is set but lists no token");
        }
        Ok(tokens)
    }

    /// One fresh random token per role, returned for printing.
    pub fn development() -> (Self, Vec<(Role, String)>) {
        let mut tokens = Tokens::default();
        let mut printed = Vec::new();
        for role in Role::ALL {
            let mut bytes = [0_u8; 24];
            rand::rng().fill_bytes(&mut bytes);
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let token = format!("dev-{role}-{hex}");
            tokens.insert(&token, role, None);
            printed.push((role, token));
        }
        (tokens, printed)
    }

    /// Accepts `token` for `role` until `expires`.
    pub fn insert(&mut self, token: &str, role: Role, expires: Option<DateTime<Utc>>) {
        self.grants.insert(digest(token), Grant { role, expires });
    }

    /// The role of a presented token.
    pub fn check(&self, token: &str, now: DateTime<Utc>) -> Result<Role, AuthError> {
        let grant = self.grants.get(&digest(token)).ok_or(AuthError::Invalid)?;
        match grant.expires {
            Some(expires) if expires <= now => Err(AuthError::Expired),
            _ => Ok(grant.role),
        }
    }

    /// The role of an `Authorization` header's value (`Bearer <token>`).
    pub fn authenticate(&self, header: Option<&str>, now: DateTime<Utc>) -> Result<Role, AuthError> {
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

    #[test]
    fn configured_tokens_map_to_roles_and_expire() {
        let tokens = Tokens::parse("client:client-token-0123456789, auditor:auditor-token-012345@2000-01-01T00:00:00Z").unwrap();
        let now = Utc::now();
        assert_eq!(tokens.authenticate(Some("Bearer client-token-0123456789"), now), Ok(Role::Client));
        assert_eq!(tokens.authenticate(Some("bearer  client-token-0123456789 "), now), Ok(Role::Client));
        assert_eq!(tokens.authenticate(Some("Bearer auditor-token-012345"), now), Err(AuthError::Expired));
        assert_eq!(tokens.authenticate(Some("Bearer nope-nope-nope-nope"), now), Err(AuthError::Invalid));
        assert_eq!(tokens.authenticate(Some("Basic abc"), now), Err(AuthError::Malformed));
        assert_eq!(tokens.authenticate(Some("Bearer"), now), Err(AuthError::Malformed));
        assert_eq!(tokens.authenticate(None, now), Err(AuthError::Missing));
    }

    #[test]
    fn bad_token_lists_are_refused_with_the_reason() {
        for (spec, says) in [
            ("client:short", "at least 16"),
            ("admin:aaaaaaaaaaaaaaaaaaaa", "unknown role"),
            ("aaaaaaaaaaaaaaaaaaaa", "without a role"),
            ("client:aaaaaaaaaaaaaaaaaaaa@tomorrow", "RFC 3339"),
            (" , ", "lists no token"),
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
            assert_eq!(tokens.check(token, Utc::now()), Ok(*role));
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
}
