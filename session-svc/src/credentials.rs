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
/// Hex digits of the creation time (milliseconds, 48 bits) that lead an id.
const TIME_HEX: usize = 12;
/// Hex length of an id: its creation time, then 128 random bits.
pub const ID_LEN: usize = TIME_HEX + ID_BYTES * 2;
/// Hex length of an id made before ids led with their time (128 random bits alone): still
/// served, so an upgrade ends no session.
const UNTIMED_ID_LEN: usize = ID_BYTES * 2;
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
        let (random, skey) = bytes.split_at(ID_BYTES);
        // Time first: ids made close together sort together, so a store's index of ids (redb's
        // B-tree, MongoDB's _id) takes a new session at its right edge, where the last one went,
        // instead of at a random leaf that must be copied, checksummed and written
        // (bench/README.md, "A login's CPU"). The 128 random bits are what makes it unguessable.
        let millis = u64::try_from(crate::record::now_millis()).unwrap_or(0) & 0xffff_ffff_ffff;
        let mut id = format!("{millis:0TIME_HEX$x}");
        id.push_str(&hex::encode(random));
        Ok(Self {
            id,
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
    (id.len() == ID_LEN || id.len() == UNTIMED_ID_LEN) && id.bytes().all(|b| b.is_ascii_hexdigit())
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
    fn ids_lead_with_their_time_and_sort_in_the_order_they_were_made() {
        let before = crate::record::now_millis();
        let first = Credentials::generate().unwrap().id;
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = Credentials::generate().unwrap().id;
        assert_eq!(first.len(), ID_LEN);
        let made = i64::from_str_radix(&first[..TIME_HEX], 16).unwrap();
        assert!(
            made >= before && made <= crate::record::now_millis(),
            "{first}"
        );
        assert!(first < second, "{first} then {second}");
        // The random part is 128 bits of its own, whatever the time.
        assert_eq!(first[TIME_HEX..].len(), 32);
    }

    #[test]
    fn ids_from_before_the_time_prefix_are_still_served() {
        let skey = Credentials::generate().unwrap().skey;
        assert!(well_formed(&"0a".repeat(16), &skey));
        for len in [0, 31, 33, 43, 45] {
            assert!(!well_formed(&"a".repeat(len), &skey), "{len}");
        }
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
