//! Device credentials: random tokens, stored only as hashes.
//!
//! Tokens carry 256 random bits, so a plain SHA-256 is enough to keep a
//! stolen database from yielding usable tokens (a slow password hash buys
//! nothing against that much entropy) and lets the hub find a device by the
//! hash of the token it presents.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new random token, as 64 lowercase hex characters.
///
/// # Errors
/// The operating system has no randomness to give.
pub fn generate_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The hash under which a token is stored.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two secrets in time that depends only on their lengths, so the
/// provisioning key cannot be guessed byte by byte from response times.
pub fn secrets_match(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_hex_and_differ() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn bearer_accepts_any_case_and_rejects_other_schemes() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(secrets_match("key", "key"));
        assert!(!secrets_match("kez", "key"));
        assert!(!secrets_match("ke", "key"));
    }
}
