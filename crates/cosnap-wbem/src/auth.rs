//! Users allowed to call the server, and HTTP Basic verification.
//!
//! **Storage**: `<data-dir>/users.json`, mode 0600, replaced atomically (temporary file in
//! the same directory, fsync, rename, fsync of the directory) under an exclusive `flock` on
//! `<data-dir>/users.lock`, so concurrent `cosnap user add` runs do not lose each other's
//! changes.
//!
//! **Hash**: PBKDF2-HMAC-SHA256 with a 16-byte random salt and [`PBKDF2_ITERATIONS`]
//! iterations (the iteration count is stored per user, so it can be raised later). Why
//! PBKDF2 and not Argon2: `ring` — already in the build as the TLS crypto provider —
//! implements it with a constant-time verify (`ring::pbkdf2::verify`), so no new crypto
//! code enters the build; 310,000 iterations is the OWASP 2021 figure for this hash and
//! costs ≈ 0.1 s per check here, well above the brief's 100k floor.
//!
//! **Cache**: a slow hash on every request would cap the server at a few requests per
//! second per core. After one successful verification, the credential is remembered under
//! `SHA-256(server secret ‖ name ‖ 0 ‖ password)`; later requests with the same header cost
//! one SHA-256. The key is a keyed hash, so the map holds no password nor a hash an
//! offline attacker could use without the per-process secret, and looking it up leaks
//! nothing useful through timing. The cache is bounded and dropped whenever `users.json`
//! changes (a removed user or a new password takes effect at once). Failed verifications
//! are not cached; slow hashes run at most [`MAX_PARALLEL_HASHES`] at a time, so a flood
//! of bad passwords costs bounded CPU and memory.
//!
//! **Throttling** ([`Authenticator::check_from`]): the cache is consulted first, so a
//! user already verified passes whatever others do; then the source's
//! [`crate::throttle`] state: a blocked source is answered [`AuthResult::Throttled`]
//! without hashing, and each source hashes one password at a time, so a flood from one
//! place holds at most one of the hashing slots and a newcomer elsewhere waits for at most
//! one hash.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::admission::Source;
use crate::throttle::Throttle;

/// PBKDF2 iterations for new passwords.
pub const PBKDF2_ITERATIONS: u32 = 310_000;
/// How many slow hashes may run at once.
pub const MAX_PARALLEL_HASHES: usize = 2;
const CACHE_CAPACITY: usize = 1024;
const ALGORITHM: &str = "pbkdf2-hmac-sha256";
const MAX_NAME_LEN: usize = 64;
const MAX_PASSWORD_LEN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid user file: {message}")]
    Corrupt { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UserError + '_ {
    move |source| UserError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserRecord {
    pub name: String,
    pub algorithm: String,
    pub iterations: u32,
    /// Base64.
    pub salt: String,
    /// Base64 of the 32-byte derived key.
    pub hash: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct UserFile {
    version: u32,
    users: Vec<UserRecord>,
}

pub fn users_path(data_dir: &Path) -> PathBuf {
    data_dir.join("users.json")
}

/// Checks a user name: 1..=64 printable characters, no `:` (HTTP Basic splits on it).
pub fn validate_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(UserError::Invalid(format!(
            "a user name has 1 to {MAX_NAME_LEN} characters"
        )));
    }
    if name.contains(':') || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(UserError::Invalid(
            "a user name may not contain ':', spaces or control characters".into(),
        ));
    }
    Ok(())
}

fn load(path: &Path) -> Result<UserFile, UserError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| UserError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UserFile {
            version: 1,
            users: Vec::new(),
        }),
        Err(e) => Err(io(path)(e)),
    }
}

/// Holds `flock(LOCK_EX)` on `<data-dir>/users.lock` while alive.
struct FileLock(#[allow(dead_code)] File);

fn lock(data_dir: &Path) -> Result<FileLock, UserError> {
    let path = data_dir.join("users.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    // SAFETY: flock on a file descriptor we own; blocks until the lock is free.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io(&path)(std::io::Error::last_os_error()));
    }
    Ok(FileLock(f))
}

fn save(data_dir: &Path, file: &UserFile) -> Result<(), UserError> {
    let path = users_path(data_dir);
    let tmp = data_dir.join(format!(".users.json.tmp.{}", std::process::id()));
    let text = serde_json::to_vec_pretty(file).map_err(|e| UserError::Invalid(e.to_string()))?;
    {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // mode() only applies on creation; a leftover temporary file keeps its mode otherwise.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io(&tmp))?;
        f.write_all(&text).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(data_dir))?;
    Ok(())
}

fn derive(salt: &[u8], iterations: u32, password: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = NonZeroU32::new(iterations.max(1)).expect("max(1) is non-zero");
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        n,
        salt,
        password,
        &mut out,
    );
    out
}

/// Adds a user or replaces their password.
pub fn add_user(data_dir: &Path, name: &str, password: &str) -> Result<(), UserError> {
    validate_name(name)?;
    if password.is_empty() {
        return Err(UserError::Invalid("the password is empty".into()));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(UserError::Invalid(format!(
            "the password is longer than {MAX_PASSWORD_LEN} bytes"
        )));
    }
    fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let _lock = lock(data_dir)?;
    let mut file = load(&users_path(data_dir))?;
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| UserError::Invalid("the system random generator failed".into()))?;
    let hash = derive(&salt, PBKDF2_ITERATIONS, password.as_bytes());
    let rec = UserRecord {
        name: name.to_string(),
        algorithm: ALGORITHM.into(),
        iterations: PBKDF2_ITERATIONS,
        salt: B64.encode(salt),
        hash: B64.encode(hash),
    };
    match file.users.iter_mut().find(|u| u.name == name) {
        Some(u) => *u = rec,
        None => file.users.push(rec),
    }
    file.version = 1;
    save(data_dir, &file)
}

pub fn remove_user(data_dir: &Path, name: &str) -> Result<(), UserError> {
    let _lock = lock(data_dir)?;
    let mut file = load(&users_path(data_dir))?;
    let before = file.users.len();
    file.users.retain(|u| u.name != name);
    if file.users.len() == before {
        return Err(UserError::NoSuchUser(name.to_string()));
    }
    save(data_dir, &file)
}

pub fn list_users(data_dir: &Path) -> Result<Vec<String>, UserError> {
    Ok(load(&users_path(data_dir))?
        .users
        .into_iter()
        .map(|u| u.name)
        .collect())
}

/// Reads a password from stdin text: everything, minus one trailing newline.
pub fn password_from_stdin_text(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

/// The result of checking an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// The user's name.
    Allowed(String),
    Denied,
    /// Too many wrong passwords from this source: try again after this long.
    Throttled(Duration),
}

#[derive(Default)]
struct State {
    users: Vec<UserRecord>,
    /// (modified time, length, inode) of users.json when loaded.
    stamp: Option<(SystemTime, u64, u64)>,
    checked: Option<Instant>,
    /// Keyed credential hash → user name.
    cache: HashMap<[u8; 32], String>,
}

/// Verifies HTTP Basic credentials against `users.json`, reloading it when it changes.
pub struct Authenticator {
    path: PathBuf,
    secret: [u8; 32],
    state: Mutex<State>,
    hashing: tokio::sync::Semaphore,
    throttle: Throttle,
    /// A record used for unknown names, so that they cost what a known name costs.
    dummy: UserRecord,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl Authenticator {
    pub fn new(data_dir: &Path) -> Result<Authenticator, UserError> {
        let rng = SystemRandom::new();
        let mut secret = [0u8; 32];
        let mut salt = [0u8; 16];
        rng.fill(&mut secret)
            .and_then(|_| rng.fill(&mut salt))
            .map_err(|_| UserError::Invalid("the system random generator failed".into()))?;
        let dummy = UserRecord {
            name: String::new(),
            algorithm: ALGORITHM.into(),
            iterations: PBKDF2_ITERATIONS,
            salt: B64.encode(salt),
            hash: B64.encode([0u8; 32]),
        };
        let a = Authenticator {
            path: users_path(data_dir),
            secret,
            state: Mutex::new(State::default()),
            hashing: tokio::sync::Semaphore::new(MAX_PARALLEL_HASHES),
            throttle: Throttle::default(),
            dummy,
        };
        a.refresh(true)?;
        Ok(a)
    }

    /// How many users the file currently holds.
    pub fn user_count(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .users
            .len()
    }

    /// Reloads users.json when it changed (checked at most once a second unless forced).
    fn refresh(&self, force: bool) -> Result<(), UserError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !force
            && st
                .checked
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        st.checked = Some(Instant::now());
        let now = stamp(&self.path);
        if !force && now == st.stamp {
            return Ok(());
        }
        let file = load(&self.path)?;
        st.users = file.users;
        st.stamp = now;
        st.cache.clear();
        Ok(())
    }

    fn cache_key(&self, name: &str, password: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.secret);
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    /// Checks an `Authorization` header value (`Basic base64(name:password)`) without
    /// throttling (for callers that know no source).
    pub async fn check(&self, header: Option<&[u8]>) -> AuthResult {
        self.check_inner(None, header).await
    }

    /// Checks an `Authorization` header value sent from `source`, throttling guesses as
    /// the module doc says.
    pub async fn check_from(&self, source: Source, header: Option<&[u8]>) -> AuthResult {
        self.check_inner(Some(source), header).await
    }

    async fn check_inner(&self, source: Option<Source>, header: Option<&[u8]>) -> AuthResult {
        let Some((name, password)) = header.and_then(parse_basic) else {
            return AuthResult::Denied;
        };
        if let Err(e) = self.refresh(false) {
            tracing::warn!("cannot reload users: {e}");
        }
        let key = self.cache_key(&name, &password);
        if let Some(user) = self.cached(&key) {
            return AuthResult::Allowed(user);
        }

        let _lane = match source {
            Some(source) => {
                if let Some(wait) = self.throttle.blocked(source, Instant::now()) {
                    return AuthResult::Throttled(wait);
                }
                let lane = self.throttle.lane(source).await;
                // Others from this source may have failed while this one waited.
                if let Some(wait) = self.throttle.blocked(source, Instant::now()) {
                    return AuthResult::Throttled(wait);
                }
                Some(lane)
            }
            None => None,
        };

        if self.verify_slowly(&name, password).await {
            if let Some(source) = source {
                self.throttle.succeeded(source);
            }
            self.remember(key, &name);
            AuthResult::Allowed(name)
        } else {
            if let Some(source) = source {
                self.throttle.failed(source, Instant::now());
            }
            AuthResult::Denied
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<String> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.cache.get(key).cloned()
    }

    fn remember(&self, key: [u8; 32], name: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.cache.len() >= CACHE_CAPACITY {
            st.cache.clear();
        }
        st.cache.insert(key, name.to_string());
    }

    /// The slow hash, one of [`MAX_PARALLEL_HASHES`]; unknown names cost the same as known.
    async fn verify_slowly(&self, name: &str, password: String) -> bool {
        let record = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.users.iter().find(|u| u.name == name).cloned()
        };
        let known = record.is_some();
        let record = record.unwrap_or_else(|| self.dummy.clone());
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || verify(&record, &password))
            .await
            .unwrap_or(false);
        ok && known
    }
}

fn verify(rec: &UserRecord, password: &str) -> bool {
    if rec.algorithm != ALGORITHM || rec.iterations == 0 || rec.iterations > 10_000_000 {
        return false;
    }
    let (Ok(salt), Ok(hash)) = (B64.decode(&rec.salt), B64.decode(&rec.hash)) else {
        return false;
    };
    let n = NonZeroU32::new(rec.iterations).expect("checked non-zero");
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        n,
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

/// Splits `Basic base64(name:password)`; `None` for anything else.
pub fn parse_basic(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Basic") || rest.len() > 4096 {
        return None;
    }
    let decoded = B64.decode(rest.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, password) = decoded.split_once(':')?;
    Some((name.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(name: &str, pw: &str) -> Vec<u8> {
        format!("Basic {}", B64.encode(format!("{name}:{pw}"))).into_bytes()
    }

    #[tokio::test]
    async fn add_verify_cache_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        add_user(dir.path(), "admin", "s3cret:with colon").unwrap();
        let mode = fs::metadata(users_path(dir.path()))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let a = Authenticator::new(dir.path()).unwrap();
        assert_eq!(
            a.check(Some(&basic("admin", "s3cret:with colon"))).await,
            AuthResult::Allowed("admin".into())
        );
        // Cached: fast the second time.
        let t = Instant::now();
        assert_eq!(
            a.check(Some(&basic("admin", "s3cret:with colon"))).await,
            AuthResult::Allowed("admin".into())
        );
        assert!(t.elapsed() < Duration::from_millis(20));
        assert_eq!(
            a.check(Some(&basic("admin", "wrong"))).await,
            AuthResult::Denied
        );
        assert_eq!(
            a.check(Some(&basic("nobody", "x"))).await,
            AuthResult::Denied
        );
        assert_eq!(a.check(None).await, AuthResult::Denied);
        assert_eq!(a.check(Some(b"Bearer abc")).await, AuthResult::Denied);
        assert_eq!(a.check(Some(b"Basic !!!")).await, AuthResult::Denied);
        // A removed user is refused at once, cache or not.
        std::thread::sleep(Duration::from_millis(1100));
        remove_user(dir.path(), "admin").unwrap();
        assert_eq!(
            a.check(Some(&basic("admin", "s3cret:with colon"))).await,
            AuthResult::Denied
        );
        assert!(list_users(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn names_and_stdin() {
        assert!(validate_name("a:b").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("ok-user_1").is_ok());
        assert_eq!(password_from_stdin_text("pw\n"), "pw");
        assert_eq!(password_from_stdin_text("pw\r\n"), "pw");
        assert_eq!(password_from_stdin_text("pw"), "pw");
    }
}
