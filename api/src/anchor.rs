//! Anchor files (`strata audit anchor`): the log's head position and digest,
//! optionally chained to the anchor before and signed with the auditor's
//! Ed25519 key, so that neither a database insider nor whoever can write the
//! anchor folder can forge one that holds.
//!
//! ```json
//! { "position": 8, "logDigest": "…", "anchoredAt": "2026-12-07T20:00:00Z",
//!   "previous": { "position": 5, "logDigest": "…", "anchorDigest": "…" },
//!   "signature": { "algorithm": "ed25519", "publicKey": "…", "value": "…" } }
//! ```
//!
//! The signature covers `"strata-anchor-v1\n"` followed by the canonical JSON
//! (keys sorted, no whitespace) of every other field; `previous.anchorDigest`
//! is the SHA-256 of the previous file's canonical JSON, signature included.
//! Keys are PEM files as `openssl genpkey -algorithm ed25519` writes them
//! (PKCS#8 private key, SubjectPublicKeyInfo public key), or made by
//! `strata audit keygen`.

use std::path::Path;

use anyhow::{bail, Context};
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use strata_store::hash::canonical_json;
use strata_store::verify::Anchor;

/// What precedes the canonical JSON in a signed message.
const SIGNED_PREFIX: &[u8] = b"strata-anchor-v1\n";
/// DER of an Ed25519 PKCS#8 private key before its 32-byte seed.
const PRIVATE_DER_PREFIX: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
/// DER of an Ed25519 SubjectPublicKeyInfo before its 32-byte key.
const PUBLIC_DER_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// An anchor file as read or about to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorFile {
    body: Value,
}

impl AnchorFile {
    /// A new, unsigned anchor taken now, chained to `previous` if given.
    pub fn new(anchor: &Anchor, previous: Option<&AnchorFile>) -> anyhow::Result<Self> {
        let mut body = anchor.to_json(chrono::Utc::now());
        if let Some(previous) = previous {
            let before = previous.anchor()?;
            body["previous"] = json!({
                "position": before.position.0,
                "logDigest": before.log_digest.to_string(),
                "anchorDigest": previous.digest(),
            });
        }
        Ok(Self { body })
    }

    /// Reads an anchor file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the anchor {}", path.display()))?;
        let body: Value = serde_json::from_str(&text).with_context(|| format!("the anchor {} is not JSON", path.display()))?;
        let file = Self { body };
        file.anchor().with_context(|| format!("the anchor {}", path.display()))?;
        Ok(file)
    }

    /// The anchored position and digest.
    pub fn anchor(&self) -> anyhow::Result<Anchor> {
        Anchor::from_json(&self.body).map_err(anyhow::Error::msg)
    }

    /// The file as written (pretty JSON and a newline).
    pub fn to_text(&self) -> String {
        serde_json::to_string_pretty(&self.body).unwrap_or_default() + "\n"
    }

    /// SHA-256 of the canonical JSON of the whole file, in hex.
    pub fn digest(&self) -> String {
        hex(&Sha256::digest(canonical_json(&self.body).as_bytes()))
    }

    /// The anchor before this one, as recorded in it.
    pub fn previous(&self) -> Option<(u64, String)> {
        let previous = self.body.get("previous")?;
        Some((previous["position"].as_u64()?, previous["anchorDigest"].as_str()?.to_owned()))
    }

    /// Whether the file carries a signature.
    pub fn is_signed(&self) -> bool {
        self.body.get("signature").is_some()
    }

    fn signed_message(&self) -> Vec<u8> {
        let mut unsigned = self.body.clone();
        if let Some(fields) = unsigned.as_object_mut() {
            fields.remove("signature");
        }
        [SIGNED_PREFIX, canonical_json(&unsigned).as_bytes()].concat()
    }

    /// Signs the file with `key` (replacing any signature).
    pub fn sign(&mut self, key: &SigningKey) {
        let signature = key.sign(&self.signed_message());
        self.body["signature"] = json!({
            "algorithm": "ed25519",
            "publicKey": hex(key.verifying_key().as_bytes()),
            "value": hex(&signature.to_bytes()),
        });
    }

    /// Checks that `key` signed exactly this content; the error says what
    /// does not hold (unsigned, another key, altered content).
    pub fn check_signature(&self, key: &VerifyingKey) -> anyhow::Result<()> {
        let Some(signature) = self.body.get("signature") else {
            bail!("it is not signed");
        };
        if signature["algorithm"].as_str() != Some("ed25519") {
            bail!("its signature is not ed25519");
        }
        if signature["publicKey"].as_str() != Some(hex(key.as_bytes()).as_str()) {
            bail!("it is signed by another key ({})", signature["publicKey"].as_str().unwrap_or("none named"));
        }
        let bytes = signature["value"].as_str().and_then(unhex).context("its signature value is not 128 hex digits")?;
        let bytes: [u8; 64] = bytes.try_into().map_err(|_| anyhow::anyhow!("its signature value is not 64 bytes"))?;
        key.verify(&self.signed_message(), &Signature::from_bytes(&bytes))
            .map_err(|_| anyhow::anyhow!("its signature does not match its content (altered after signing)"))
    }
}

/// Reads an Ed25519 private key (PKCS#8 PEM).
pub fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let der = read_pem(path, "PRIVATE KEY")?;
    let seed = der
        .strip_prefix(&PRIVATE_DER_PREFIX[..])
        .and_then(|seed| <[u8; 32]>::try_from(seed).ok())
        .with_context(|| format!("{} is not an Ed25519 private key (openssl genpkey -algorithm ed25519)", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads an Ed25519 public key (SubjectPublicKeyInfo PEM).
pub fn read_verifying_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let der = read_pem(path, "PUBLIC KEY")?;
    let key = der
        .strip_prefix(&PUBLIC_DER_PREFIX[..])
        .and_then(|key| <[u8; 32]>::try_from(key).ok())
        .with_context(|| format!("{} is not an Ed25519 public key (openssl pkey -pubout)", path.display()))?;
    VerifyingKey::from_bytes(&key).with_context(|| format!("{} does not hold a valid Ed25519 point", path.display()))
}

/// `strata audit keygen`: writes a new key pair; the private file is
/// readable by its owner only and neither file may exist already.
pub fn write_key_pair(sign_key: &Path, verify_key: &Path) -> anyhow::Result<()> {
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let private = pem("PRIVATE KEY", &[&PRIVATE_DER_PREFIX[..], key.as_bytes()].concat());
    let public = pem("PUBLIC KEY", &[&PUBLIC_DER_PREFIX[..], key.verifying_key().as_bytes()].concat());
    write_new(sign_key, &private, 0o600)?;
    write_new(verify_key, &public, 0o644)
}

fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn pem(label: &str, der: &[u8]) -> String {
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", base64::engine::general_purpose::STANDARD.encode(der))
}

fn read_pem(path: &Path, label: &str) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the key {}", path.display()))?;
    let (begin, end) = (format!("-----BEGIN {label}-----"), format!("-----END {label}-----"));
    let body = text
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(body, _)| body.split_whitespace().collect::<String>())
        .with_context(|| format!("{} holds no {begin} block", path.display()))?;
    base64::engine::general_purpose::STANDARD.decode(body).with_context(|| format!("{} is not valid PEM", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_store::{ChainHash, Position};

    fn anchor(position: u64) -> Anchor {
        Anchor { position: Position(position), log_digest: ChainHash([position as u8; 32]) }
    }

    #[test]
    fn a_signature_holds_for_its_key_and_content_only() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let mut file = AnchorFile::new(&anchor(8), None).unwrap();
        assert!(file.check_signature(&key.verifying_key()).unwrap_err().to_string().contains("not signed"));
        file.sign(&key);
        file.check_signature(&key.verifying_key()).unwrap();
        assert!(file.check_signature(&other.verifying_key()).unwrap_err().to_string().contains("another key"));
        let mut altered = file.clone();
        altered.body["position"] = json!(9);
        assert!(altered.check_signature(&key.verifying_key()).unwrap_err().to_string().contains("altered"));
        // Re-read from its text, it still holds.
        let again = AnchorFile { body: serde_json::from_str(&file.to_text()).unwrap() };
        again.check_signature(&key.verifying_key()).unwrap();
        assert_eq!(again.anchor().unwrap(), anchor(8));
    }

    #[test]
    fn an_anchor_names_the_one_before_it_by_digest() {
        let first = AnchorFile::new(&anchor(5), None).unwrap();
        let second = AnchorFile::new(&anchor(8), Some(&first)).unwrap();
        assert_eq!(second.previous(), Some((5, first.digest())));
        let mut other_first = first.clone();
        other_first.body["logDigest"] = json!(ChainHash([9; 32]).to_string());
        assert_ne!(other_first.digest(), first.digest());
    }

    #[test]
    fn keys_round_trip_through_pem_files_and_are_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = (dir.path().join("anchor.key"), dir.path().join("anchor.pub"));
        write_key_pair(&private, &public).unwrap();
        let key = read_signing_key(&private).unwrap();
        assert_eq!(read_verifying_key(&public).unwrap(), key.verifying_key());
        assert!(write_key_pair(&private, &public).is_err(), "an existing key file is never overwritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // The public key is not a private key, and the other way round.
        assert!(read_signing_key(&public).is_err());
        assert!(read_verifying_key(&private).is_err());
        // What openssl writes for RFC 8410's example key reads the same.
        let openssl =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        std::fs::write(dir.path().join("rfc8410.key"), openssl).unwrap();
        let key = read_signing_key(&dir.path().join("rfc8410.key")).unwrap();
        assert_eq!(hex(key.verifying_key().as_bytes()), "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1");
    }
}
