//! The server's ed25519 token signing key, kept in the data directory.
//!
//! The same key is used by `wardlink serve` to verify join tokens and by `wardlink room create`
//! to sign them, so links can be made while the server runs (or before it first starts).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use wardlink_signaling::token::{TokenSigner, TokenVerifier};

/// File name of the signing key inside the data directory.
pub const KEY_FILE_NAME: &str = "token-signing.key";

/// The token signer and its matching verifier.
#[derive(Clone, Debug)]
pub struct Keys {
    /// Signs join tokens.
    pub signer: TokenSigner,
    /// Verifies join tokens.
    pub verifier: TokenVerifier,
}

impl Keys {
    /// Keys for a given secret key (tests; in production use [`Keys::load_or_create`]).
    pub fn from_signing_key(key: SigningKey) -> Keys {
        let signer = TokenSigner::new(key);
        let verifier = signer.verifier();
        Keys { signer, verifier }
    }

    /// Keys with a fresh random secret that is not stored anywhere.
    pub fn ephemeral() -> Keys {
        Keys::from_signing_key(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// Path of the key file in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(KEY_FILE_NAME)
    }

    /// Loads `<data_dir>/token-signing.key`, creating the directory (mode 0700) and a new
    /// random key (mode 0600) if absent. Safe against a concurrent creator: the key is written
    /// to a temporary file and hard-linked into place, so readers never see a partial file and
    /// the first writer wins.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Keys> {
        create_private_dir(data_dir)?;
        let path = Keys::path(data_dir);
        if !path.exists() {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let text = format!("{}\n", STANDARD.encode(key.to_bytes()));
            let tmp = data_dir.join(format!(".{KEY_FILE_NAME}.{}.tmp", std::process::id()));
            write_private_file(&tmp, text.as_bytes())?;
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => tracing::info!(path = %path.display(), "created a new token signing key"),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        }
        Keys::load(&path)
    }

    /// Loads an existing key file (base64 of the 32-byte secret).
    pub fn load(path: &Path) -> anyhow::Result<Keys> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let bytes = STANDARD
            .decode(text.trim())
            .with_context(|| format!("{} is not base64", path.display()))?;
        let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            bail!("{} does not hold a 32-byte ed25519 key", path.display());
        };
        warn_if_readable_by_others(path);
        Ok(Keys::from_signing_key(SigningKey::from_bytes(&secret)))
    }
}

/// Creates `dir` (and parents) if missing; the last component gets mode 0700 on unix because
/// it holds secrets.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))
}

/// Writes a new file readable only by the owner (0600 on unix), failing if it exists.
pub fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "token signing key is readable by group/others; run: chmod 600 {}",
                    path.display()
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardlink_signaling::role::Role;
    use wardlink_signaling::token::{JoinClaims, TOKEN_VERSION};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wardlink-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn claims() -> JoinClaims {
        JoinClaims {
            v: TOKEN_VERSION,
            room: "r".into(),
            title: "t".into(),
            role: Role::Host,
            name: "n".into(),
            iat: 0,
            exp: 100,
            jti: "j".into(),
        }
    }

    #[test]
    fn creates_once_then_reuses() {
        let root = temp_dir("reuse");
        let dir = root.join("nested");
        let first = Keys::load_or_create(&dir).unwrap();
        let second = Keys::load_or_create(&dir).unwrap();
        let token = first.signer.sign(&claims());
        assert_eq!(second.verifier.verify(&token, 1).unwrap(), claims());
        // A different directory gets a different key.
        let other_dir = temp_dir("other");
        let other = Keys::load_or_create(&other_dir).unwrap();
        assert!(other.verifier.verify(&token, 1).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(Keys::path(&dir))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE_NAME)]);
        std::fs::remove_dir_all(root).unwrap();
        std::fs::remove_dir_all(other_dir).unwrap();
    }

    #[test]
    fn corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(Keys::path(&dir), "AAAA\n").unwrap();
        let err = Keys::load_or_create(&dir).unwrap_err();
        assert!(format!("{err:#}").contains("32-byte"), "{err:#}");
        assert_eq!(std::fs::read_to_string(Keys::path(&dir)).unwrap(), "AAAA\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
