//! Session credentials: a public id and a secret skey, both from the OS CSPRNG. Only a hash
//! of the skey is ever stored, and it is compared in constant time.
//!
//! Unlike wafer (skey = sha1(appId + appSecret + sessionKey)), nothing here is derived from a
//! secret: a leaked skey reveals nothing, and a leaked store reveals no usable skey.
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const ID_BYTES: usize = 16; // 128 bits
const SKEY_BYTES: usize = 32; // 256 bits
/// Hex length of an id.
pub const ID_LEN: usize = ID_BYTES * 2;
/// Base64url (unpadded) length of an skey.
pub const SKEY_LEN: usize = 43;

#[derive(Clone)]
pub struct Credentials {
    pub id: String,
    pub skey: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &short_hash(&self.id))
            .field("skey", &"[redacted]")
            .finish()
    }
}

impl Credentials {
    pub fn generate() -> Result<Self, getrandom::Error> {
        // One draw for both: each draw is a trip to the kernel.
        let mut bytes = [0u8; ID_BYTES + SKEY_BYTES];
        getrandom::fill(&mut bytes)?;
        let (id, skey) = bytes.split_at(ID_BYTES);
        Ok(Self {
            id: hex::encode(id),
            skey: URL_SAFE_NO_PAD.encode(skey),
        })
    }

    pub fn skey_hash(&self) -> String {
        hash_skey(&self.skey)
    }
}

/// SHA-256 of the skey, hex. A fast hash is right here: the skey has 256 bits of entropy, so
/// there is nothing for a slow password hash to protect against.
pub fn hash_skey(skey: &str) -> String {
    hex::encode(Sha256::digest(skey.as_bytes()))
}

/// Constant-time check of a presented skey against a stored hash.
pub fn skey_matches(presented: &str, stored_hash: &str) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    match hex::decode(stored_hash) {
        Ok(stored) => presented.as_slice().ct_eq(&stored).into(),
        Err(_) => false,
    }
}

/// Whether a client-supplied id/skey pair can be ours at all; anything else is refused without
/// touching the store.
pub fn well_formed(id: &str, skey: &str) -> bool {
    well_formed_id(id)
        && skey.len() == SKEY_LEN
        && skey
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn well_formed_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A short, non-reversible tag for logs: lets operators correlate lines about one session or
/// user without the logs holding the id itself.
pub use weapp_wire::short_hash;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_are_well_formed_and_distinct() {
        let a = Credentials::generate().unwrap();
        let b = Credentials::generate().unwrap();
        assert!(well_formed(&a.id, &a.skey));
        assert_ne!(a.id, b.id);
        assert_ne!(a.skey, b.skey);
    }

    #[test]
    fn skey_hash_matches_only_the_skey() {
        let c = Credentials::generate().unwrap();
        let stored = c.skey_hash();
        assert!(skey_matches(&c.skey, &stored));
        assert!(!skey_matches(
            &Credentials::generate().unwrap().skey,
            &stored
        ));
        assert!(!skey_matches(&c.skey, "not-hex"));
        assert!(!stored.contains(&c.skey));
    }

    #[test]
    fn debug_does_not_print_secrets() {
        let c = Credentials::generate().unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains(&c.skey) && !shown.contains(&c.id));
    }

    #[test]
    fn malformed_pairs_are_refused() {
        let c = Credentials::generate().unwrap();
        assert!(!well_formed("", &c.skey));
        assert!(!well_formed(&c.id, ""));
        assert!(!well_formed(&format!("{}g", &c.id[1..]), &c.skey));
        assert!(!well_formed(&c.id, &format!("{}=", &c.skey[1..])));
    }
}
