//! What a spinlet was started with besides its release — env, memory, cpu, health check — as a
//! fingerprint kept in its record. Two spinlets of one release with the same fingerprint are
//! interchangeable; a different one means the app's definition changed since it started, and the
//! app rolls out new spinlets. A supervisor that adopts spinlets of a previous one compares
//! fingerprints, so an edit made while no supervisor ran is applied too.
//!
//! The fingerprint is keyed (blake3 with a random key kept in `data_dir`), since env values may be
//! secrets and records live in a store others may read: without the key nobody can test guesses
//! against it.

use spinforge_state::config::AppConfig;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The key file in `data_dir`.
const KEY_FILE: &str = "settings.key";

/// The fingerprint key: 32 random bytes, created once per data folder.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

impl Key {
    /// Reads `data_dir/settings.key`, creating it (0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Key> {
        let path = data_dir.join(KEY_FILE);
        let mut key = [0u8; 32];
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                f.read_exact(&mut key)?;
                return Ok(Key(key));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        // Written aside and renamed: a half-written key is never read.
        let partial = data_dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)?;
        f.write_all(&key)?;
        f.sync_all()?;
        std::fs::rename(&partial, &path)?;
        Ok(Key(key))
    }

    /// A key for tests.
    pub fn fixed(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// The fingerprint of what `app`'s spinlets are started with besides their release.
    pub fn fingerprint(&self, app: &AppConfig) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        // Each item length-prefixed: no two different settings hash the same bytes.
        let mut item = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        item(b"env");
        for (k, v) in &app.env {
            item(k.as_bytes());
            item(v.expose().as_bytes());
        }
        item(b"memory");
        item(&app.memory.unwrap_or(0).to_le_bytes());
        item(b"cpu");
        item(&app.cpu.unwrap_or(0.0).to_bits().to_le_bytes());
        item(b"health_check");
        item(app.health_check.path.as_bytes());
        item(&(app.health_check.timeout.as_millis() as u64).to_le_bytes());
        h.finalize().to_hex()[..32].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spinforge_state::config::{AppSource, EnvValue, Framework, HealthCheck};

    fn app() -> AppConfig {
        AppConfig {
            name: "a".into(),
            domains: vec!["a.test".into()],
            source: AppSource::Directory("/a1".into()),
            framework: Framework::Auto,
            env: [("APP_NAME".to_string(), EnvValue::new("a1"))].into(),
            instances: 1,
            memory: None,
            cpu: None,
            idle_timeout: None,
            drain_timeout: spinforge_state::config::DEFAULT_DRAIN_TIMEOUT,
            health_check: HealthCheck::default(),
            policy: Default::default(),
            tls: Default::default(),
            spa: false,
        }
    }

    #[test]
    fn what_a_spinlet_runs_with_changes_the_fingerprint_and_nothing_else_does() {
        let key = Key::fixed([7; 32]);
        let base = key.fingerprint(&app());
        // Not part of a running spinlet: source (that is the release), domains, instances.
        let mut same = app();
        same.source = AppSource::Directory("/a2".into());
        same.domains = vec!["b.test".into()];
        same.instances = 3;
        assert_eq!(key.fingerprint(&same), base);
        let changes: [fn(&mut AppConfig); 5] = [
            |a| {
                a.env.insert("APP_NAME".into(), EnvValue::new("a2"));
            },
            |a| {
                a.env.insert("APP_NAMEa".into(), EnvValue::new("1"));
            },
            |a| a.memory = Some(256 << 20),
            |a| a.cpu = Some(0.5),
            |a| a.health_check.path = "/health".into(),
        ];
        for change in changes {
            let mut other = app();
            change(&mut other);
            assert_ne!(key.fingerprint(&other), base);
        }
        assert_ne!(Key::fixed([8; 32]).fingerprint(&app()), base, "keyed");
    }

    #[test]
    fn the_key_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = Key::load_or_create(dir.path()).expect("created");
        let b = Key::load_or_create(dir.path()).expect("read");
        assert_eq!(a.0, b.0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
