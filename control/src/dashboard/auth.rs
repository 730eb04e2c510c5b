//! Who may see the dashboard: the holder of the cluster's REST token, proved in one of three
//! ways — `Authorization: Bearer TOKEN` (scripts), a session cookie got by posting the token to
//! `/api/login` (the page's form), or a one-time login code (`yr dashboard` prints a URL with
//! one) exchanged for the same cookie at `/login?code=CODE`.
//!
//! A login code is `NONCE.EXPIRY.MAC`: a random hex nonce, the Unix second it expires, and the
//! hex HMAC-SHA256 under the REST token of `label|NONCE|EXPIRY`. Only a holder of the token can
//! make one, so the CLI makes it without asking the server. Invariants: a code is accepted at
//! most once (its nonce is kept until it expires) and never after its expiry; every comparison
//! of a secret takes the same time whatever the bytes; the tables of used nonces and sessions
//! are bounded, so a flood of logins cannot grow memory without end.

use std::collections::HashMap;

use hmac::{Hmac, Mac};

type HmacSha256 = Hmac<sha2::Sha256>;

/// How long a login code is valid after it is made.
pub const CODE_VALID_SECS: u64 = 120;
/// How long a session cookie lasts.
pub const SESSION_SECS: u64 = 12 * 3600;
/// The session cookie's name.
pub const COOKIE: &str = "yr_dashboard";
/// Most sessions (and used nonces) kept; beyond it the oldest go first.
const MAX_ENTRIES: usize = 4096;
/// What the MAC of a login code covers before its fields: codes of another purpose made with
/// the same token never pass as login codes.
const LABEL: &str = "yr dashboard login v1";

/// Constant-time equality, the REST services' own.
pub use crate::rest::same_bytes;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` random bytes in hex, from the system's generator.
pub fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; n];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // The system generator does not fail on Linux; should it, two v4 UUIDs (also from
        // the OS generator) stand in rather than a predictable value.
        let u = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        return u.chars().take(2 * n).collect();
    }
    hex(&b)
}

fn mac(token: &str, nonce: &str, expiry: u64) -> String {
    let mut m = match HmacSha256::new_from_slice(token.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes a key of any length"),
    };
    m.update(format!("{LABEL}|{nonce}|{expiry}").as_bytes());
    hex(&m.finalize().into_bytes())
}

/// A login code valid from `now_secs` for [`CODE_VALID_SECS`], made with the REST token.
pub fn login_code(token: &str, now_secs: u64) -> String {
    let nonce = random_hex(16);
    let expiry = now_secs + CODE_VALID_SECS;
    format!("{nonce}.{expiry}.{}", mac(token, &nonce, expiry))
}

/// Why a login code is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeError {
    Malformed,
    Forged,
    Expired,
    Used,
}

impl std::fmt::Display for CodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CodeError::Malformed => "the login code is not NONCE.EXPIRY.MAC",
            CodeError::Forged => "the login code was not made with this cluster's token",
            CodeError::Expired => "the login code has expired: run `yr dashboard` again",
            CodeError::Used => "the login code was used already: run `yr dashboard` again",
        })
    }
}

/// The server's memory of logins: used nonces and live sessions.
#[derive(Default)]
pub struct Logins {
    /// nonce → its code's expiry (Unix seconds).
    used: HashMap<String, u64>,
    /// session id → expiry (Unix seconds).
    sessions: HashMap<String, u64>,
}

impl Logins {
    /// Accepts `code` once if it was made with `token` and has not expired at `now_secs`.
    pub fn redeem(&mut self, token: &str, code: &str, now_secs: u64) -> Result<(), CodeError> {
        let mut parts = code.trim().splitn(3, '.');
        let (Some(nonce), Some(expiry), Some(given)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CodeError::Malformed);
        };
        if nonce.len() < 16 || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CodeError::Malformed);
        }
        let expiry: u64 = expiry.parse().map_err(|_| CodeError::Malformed)?;
        if !same_bytes(given.as_bytes(), mac(token, nonce, expiry).as_bytes()) {
            return Err(CodeError::Forged);
        }
        // A genuine code's expiry is at most CODE_VALID_SECS ahead (a clock set back later
        // would otherwise keep a nonce for long).
        if expiry <= now_secs || expiry > now_secs + CODE_VALID_SECS + 60 {
            return Err(CodeError::Expired);
        }
        self.forget_expired(now_secs);
        if self.used.contains_key(nonce) {
            return Err(CodeError::Used);
        }
        if self.used.len() >= MAX_ENTRIES {
            evict_oldest(&mut self.used);
        }
        self.used.insert(nonce.to_string(), expiry);
        Ok(())
    }

    /// A new session valid from `now_secs` for [`SESSION_SECS`]: its id, for the cookie.
    pub fn open_session(&mut self, now_secs: u64) -> String {
        self.forget_expired(now_secs);
        if self.sessions.len() >= MAX_ENTRIES {
            evict_oldest(&mut self.sessions);
        }
        let id = random_hex(32);
        self.sessions.insert(id.clone(), now_secs + SESSION_SECS);
        id
    }

    /// Whether `id` names a live session. The lookup compares every live id in constant time
    /// rather than hashing the given one, so its timing reveals nothing about the ids.
    pub fn session_valid(&self, id: &str, now_secs: u64) -> bool {
        let mut ok = false;
        for (s, &exp) in &self.sessions {
            ok |= same_bytes(s.as_bytes(), id.as_bytes()) && exp > now_secs;
        }
        ok
    }

    fn forget_expired(&mut self, now_secs: u64) {
        self.used.retain(|_, &mut e| e > now_secs);
        self.sessions.retain(|_, &mut e| e > now_secs);
    }
}

fn evict_oldest(m: &mut HashMap<String, u64>) {
    if let Some(k) = m.iter().min_by_key(|(_, &e)| e).map(|(k, _)| k.clone()) {
        m.remove(&k);
    }
}

/// The session id in a `Cookie` header's value, if it has ours.
pub fn session_cookie(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?;
    text.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == COOKIE).then_some(v.trim())
    })
}

/// The `Set-Cookie` value of session `id`: script-proof (HttpOnly), never sent by other sites'
/// requests (SameSite=Strict), `Secure` when the dashboard speaks HTTPS.
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "the-rest-token";

    #[test]
    fn a_code_is_accepted_once() {
        let mut l = Logins::default();
        let code = login_code(T, 1_000);
        assert_eq!(l.redeem(T, &code, 1_001), Ok(()));
        assert_eq!(l.redeem(T, &code, 1_002), Err(CodeError::Used));
        // Another code works.
        assert_eq!(l.redeem(T, &login_code(T, 1_000), 1_003), Ok(()));
    }

    #[test]
    fn an_expired_code_is_refused() {
        let mut l = Logins::default();
        let code = login_code(T, 1_000);
        assert_eq!(
            l.redeem(T, &code, 1_000 + CODE_VALID_SECS),
            Err(CodeError::Expired)
        );
        assert_eq!(l.redeem(T, &code, 1_000 + 10), Ok(()));
    }

    #[test]
    fn forged_codes_are_refused() {
        let mut l = Logins::default();
        let other = login_code("another-token", 1_000);
        assert_eq!(l.redeem(T, &other, 1_001), Err(CodeError::Forged));
        // A genuine code whose expiry was moved on.
        let code = login_code(T, 1_000);
        let mut p: Vec<&str> = code.split('.').collect();
        let later = (1_000 + CODE_VALID_SECS + 30).to_string();
        p[1] = &later;
        assert_eq!(l.redeem(T, &p.join("."), 1_001), Err(CodeError::Forged));
        for bad in [
            "",
            "abc",
            "a.b.c",
            "zz.1.x",
            &format!("{}.x.y", "0".repeat(32)),
        ] {
            assert_eq!(l.redeem(T, bad, 1_001), Err(CodeError::Malformed), "{bad}");
        }
        // A refused code left no trace: the genuine one still works.
        assert_eq!(l.redeem(T, &code, 1_001), Ok(()));
    }

    #[test]
    fn sessions_last_until_they_expire() {
        let mut l = Logins::default();
        let id = l.open_session(100);
        assert_eq!(id.len(), 64);
        assert!(l.session_valid(&id, 101));
        assert!(!l.session_valid("not-a-session", 101));
        assert!(!l.session_valid(&id, 100 + SESSION_SECS));
        let other = l.open_session(100);
        assert_ne!(id, other, "ids are random");
    }

    #[test]
    fn cookies_are_read_and_written() {
        let c = set_cookie("abc", false);
        assert!(c.starts_with("yr_dashboard=abc;"));
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict"));
        assert!(!c.contains("Secure"));
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert_eq!(session_cookie(b"a=1; yr_dashboard=xyz; b=2"), Some("xyz"));
        assert_eq!(session_cookie(b"a=1"), None);
    }

    #[test]
    fn same_bytes_compares() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
    }
}
