//! An app's message-push secrets: the Token and the EncodingAESKey the operator typed into
//! WeChat's console, each in a file of its own (mode 600, like the AppSecret). Read and checked
//! at start and on every reload; errors name the file, never what it holds.
use std::path::Path;

use secrecy::{ExposeSecret as _, SecretString};
use weapp_wire::wechat_push::AesKey;

/// WeChat's console takes a Token of 3 to 32 letters and digits.
const TOKEN_LEN: std::ops::RangeInclusive<usize> = 3..=32;

pub struct PushKeys {
    token: SecretString,
    /// None: the console is in plaintext mode (encrypted pushes are then refused).
    aes_key: Option<AesKey>,
}

impl std::fmt::Debug for PushKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushKeys")
            .field("aes_key", &self.aes_key.is_some())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the {what} file {}: {e}", path.display()))?;
    Ok(text.trim().to_owned())
}

impl PushKeys {
    /// Reads the Token file and, for compatible or safe mode, the EncodingAESKey file. Also
    /// answers the bytes read, for the caller's digest of what its configuration is built
    /// from (a reload applies only what changed).
    pub fn load(token_file: &Path, aes_key_file: Option<&Path>) -> Result<(Self, Vec<u8>), String> {
        let token = read(token_file, "push Token")?;
        if !TOKEN_LEN.contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "{} must hold the push Token as in WeChat's console: 3 to 32 letters or digits",
                token_file.display()
            ));
        }
        let mut read_bytes = token.as_bytes().to_vec();
        let aes_key = match aes_key_file {
            None => None,
            Some(path) => {
                let encoding = read(path, "EncodingAESKey")?;
                let key = AesKey::from_encoding(&encoding).map_err(|_| {
                    format!(
                        "{} must hold the EncodingAESKey as in WeChat's console: 43 letters \
                         or digits",
                        path.display()
                    )
                })?;
                read_bytes.push(0);
                read_bytes.extend_from_slice(encoding.as_bytes());
                Some(key)
            }
        };
        Ok((
            Self {
                token: SecretString::from(token),
                aes_key,
            },
            read_bytes,
        ))
    }

    pub fn token(&self) -> &str {
        self.token.expose_secret()
    }

    pub fn aes_key(&self) -> Option<&AesKey> {
        self.aes_key.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_are_checked_and_their_errors_show_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("push.token");
        let key = dir.path().join("push.aeskey");
        std::fs::write(&token, "spamtest\n").unwrap();
        std::fs::write(&key, "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\n").unwrap();
        let (keys, _) = PushKeys::load(&token, Some(&key)).unwrap();
        assert_eq!(keys.token(), "spamtest");
        assert!(keys.aes_key().is_some());
        assert!(!format!("{keys:?}").contains("spamtest"));

        std::fs::write(&token, "has space inside").unwrap();
        let refused = PushKeys::load(&token, None).unwrap_err();
        assert!(
            refused.contains("push.token") && !refused.contains("space"),
            "{refused}"
        );

        std::fs::write(&token, "spamtest").unwrap();
        std::fs::write(&key, "tooshort-secretish").unwrap();
        let refused = PushKeys::load(&token, Some(&key)).unwrap_err();
        assert!(
            refused.contains("push.aeskey") && !refused.contains("secretish"),
            "{refused}"
        );
        assert!(PushKeys::load(&dir.path().join("absent"), None).is_err());
    }
}
