//! Staff accounts, password and TOTP login, account lockout and login sessions.
//!
//! Every staff member has a personal account (the MHLW security guideline asks that each
//! user be identified and authenticated individually): a password hashed with Argon2id and
//! a TOTP second factor. Logging in takes two steps. The password opens a session at stage
//! `password`, which can do nothing but finish the second factor; a valid TOTP code (or
//! enrolling one at first login) raises it to `full`.
//!
//! Sessions are identified by a random cookie value of which only the SHA-256 is stored, so
//! reading the database does not yield a usable session. They end after
//! `security.session_idle_minutes` without activity or `session_absolute_hours` after login.
//!
//! The database functions take a `&Connection` and the time, so they are synchronous and
//! testable with an injected clock; [`Accounts`] wraps the slow parts (Argon2) and the
//! in-memory address limits for the async HTTP handlers.

use std::net::IpAddr;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use rusqlite::{params, Connection, OptionalExtension as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::config::Config;
use crate::ratelimit::{minutes_ms, AddressRefusal, LoginLimiter};
use crate::store::Store;

/// Shortest password accepted for a new account, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted, in bytes: Argon2 hashes any length, but a megabyte "password"
/// should not be hashed on the attacker's behalf.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// A session that has passed the password but not the second factor lasts at most this long.
pub const PASSWORD_STAGE_MS: i64 = 10 * 60 * 1000;

/// An Argon2id hash (default parameters) of a password nobody knows. Logins for unknown
/// user names are checked against it, so they take as long as logins with a wrong password
/// and do not reveal which names exist. A test keeps its parameters equal to the defaults.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$d2FyZGxpbmstZHVtbXktc2FsdA$JDaBvRIlqTsWFiS0SW0BUdIKUApGBR+Mn2x+ftfCkBM";

/// A staff member's profession.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profession {
    /// 看護師.
    Nurse,
    /// 医師.
    Doctor,
    /// Medical social worker (医療ソーシャルワーカー).
    Msw,
    /// System administrator.
    Admin,
}

impl Profession {
    /// Every profession.
    pub const ALL: [Profession; 4] = [
        Profession::Nurse,
        Profession::Doctor,
        Profession::Msw,
        Profession::Admin,
    ];

    /// The snake_case name stored in the database and sent in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Profession::Nurse => "nurse",
            Profession::Doctor => "doctor",
            Profession::Msw => "msw",
            Profession::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Profession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Profession {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profession::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown profession {s:?} (expected nurse, doctor, msw or admin)")
            })
    }
}

/// A staff account as the rest of the server sees it (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Row id.
    #[serde(skip)]
    pub id: i64,
    /// Login name (lowercase).
    pub username: String,
    /// Name shown to other participants.
    pub display_name: String,
    /// Profession.
    pub profession: Profession,
    /// May manage accounts.
    pub is_admin: bool,
    /// The account may no longer log in.
    pub disabled: bool,
    /// A TOTP secret is enrolled and confirmed.
    pub totp_enrolled: bool,
    /// An administrator turned the second factor off for this account.
    pub totp_disabled: bool,
    /// Account creation, ms since the epoch.
    pub created_ms: i64,
}

/// A request to create an account.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Login name: 3-64 characters of `a-z 0-9 . _ -` (upper case is folded).
    pub username: String,
    /// Name shown to other participants.
    pub display_name: String,
    /// Profession.
    pub profession: Profession,
    /// May manage accounts.
    pub is_admin: bool,
    /// Initial password (at least [`MIN_PASSWORD_CHARS`] characters).
    pub password: String,
}

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The user name is not acceptable.
    #[error("invalid username: {0}")]
    InvalidUsername(&'static str),
    /// The display name is not acceptable.
    #[error("invalid display name: {0}")]
    InvalidDisplayName(&'static str),
    /// The password is too short or too long.
    #[error("unacceptable password: {0}")]
    WeakPassword(String),
    /// Another account has this user name.
    #[error("the username is already taken")]
    UsernameTaken,
    /// No account has this user name.
    #[error("no such user")]
    NotFound,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// Hashing failed (should not happen with valid parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Folds and checks a user name: 3-64 characters of `a-z 0-9 . _ -`, starting with a
/// letter or digit.
pub fn validate_username(username: &str) -> Result<String, AccountError> {
    let name = username.trim().to_ascii_lowercase();
    if name.len() < 3 || name.len() > 64 {
        return Err(AccountError::InvalidUsername("must be 3-64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(AccountError::InvalidUsername(
            "may only contain a-z, 0-9, '.', '_' and '-'",
        ));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(AccountError::InvalidUsername(
            "must start with a letter or digit",
        ));
    }
    Ok(name)
}

/// Trims and checks a display name: 1-64 characters, no control characters.
pub fn validate_display_name(name: &str) -> Result<String, AccountError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(AccountError::InvalidDisplayName("empty"));
    }
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(AccountError::InvalidDisplayName(
            "longer than 64 characters",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(AccountError::InvalidDisplayName(
            "contains control characters",
        ));
    }
    Ok(name.to_owned())
}

/// Checks a new password's length.
pub fn validate_password(password: &str) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AccountError::WeakPassword(format!(
            "must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::WeakPassword(format!(
            "must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Argon2id hash (default parameters, random salt) in PHC string form. Slow by design: call
/// it off the async executor.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AccountError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC `hash`. A malformed hash never matches. Slow by design.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Validates `user`, hashes its password (slow) and inserts it.
pub fn create_user(conn: &Connection, user: &NewUser, now_ms: i64) -> Result<User, AccountError> {
    validate_password(&user.password)?;
    let hash = hash_password(&user.password)?;
    insert_user(conn, user, &hash, now_ms)
}

/// Inserts `user` with an already computed `password_hash` (the password field is ignored),
/// so async callers can hash on the blocking pool without holding the database.
pub fn insert_user(
    conn: &Connection,
    user: &NewUser,
    password_hash: &str,
    now_ms: i64,
) -> Result<User, AccountError> {
    let username = validate_username(&user.username)?;
    let display_name = validate_display_name(&user.display_name)?;
    let result = conn.execute(
        "INSERT INTO users (username, display_name, profession, is_admin, password_hash, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            username,
            display_name,
            user.profession.as_str(),
            user.is_admin,
            password_hash,
            now_ms
        ],
    );
    match result {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(AccountError::UsernameTaken)
        }
        Err(e) => return Err(e.into()),
    }
    find_user(conn, &username)?.ok_or(AccountError::NotFound)
}

const USER_COLUMNS: &str = "id, username, display_name, profession, is_admin, disabled, \
     totp_secret IS NOT NULL, totp_disabled, created_ms";

fn user_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    let profession: String = row.get(3)?;
    Ok(User {
        id: row.get(0)?,
        username: row.get(1)?,
        display_name: row.get(2)?,
        // An unknown profession can only come from editing the file by hand; show it as a
        // nurse rather than refusing every query.
        profession: profession.parse().unwrap_or(Profession::Nurse),
        is_admin: row.get(4)?,
        disabled: row.get(5)?,
        totp_enrolled: row.get(6)?,
        totp_disabled: row.get(7)?,
        created_ms: row.get(8)?,
    })
}

/// The account named `username` (folded to lower case), if any.
pub fn find_user(conn: &Connection, username: &str) -> Result<Option<User>, AccountError> {
    let username = username.trim().to_ascii_lowercase();
    Ok(conn
        .query_row(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?1"),
            [username],
            user_from_row,
        )
        .optional()?)
}

/// The account with row id `id`, if any.
pub fn user_by_id(conn: &Connection, id: i64) -> Result<Option<User>, AccountError> {
    Ok(conn
        .query_row(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
            [id],
            user_from_row,
        )
        .optional()?)
}

/// Every account, by user name.
pub fn list_users(conn: &Connection) -> Result<Vec<User>, AccountError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {USER_COLUMNS} FROM users ORDER BY username"
    ))?;
    let users = stmt
        .query_map([], user_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(users)
}

/// Disables `username` and ends its sessions. Disabling twice is not an error.
pub fn disable_user(conn: &Connection, username: &str) -> Result<User, AccountError> {
    let user = find_user(conn, username)?.ok_or(AccountError::NotFound)?;
    conn.execute("UPDATE users SET disabled = 1 WHERE id = ?1", [user.id])?;
    delete_user_sessions(conn, user.id)?;
    user_by_id(conn, user.id)?.ok_or(AccountError::NotFound)
}

/// Forgets `username`'s TOTP secret (e.g. a lost phone) and ends its sessions: the next
/// login must enrol a new one. Also undoes an administrator's "TOTP off".
pub fn reset_totp(conn: &Connection, username: &str) -> Result<User, AccountError> {
    let user = find_user(conn, username)?.ok_or(AccountError::NotFound)?;
    conn.execute(
        "UPDATE users SET totp_secret = NULL, totp_pending = NULL, totp_disabled = 0,
                totp_last_step = 0 WHERE id = ?1",
        [user.id],
    )?;
    delete_user_sessions(conn, user.id)?;
    user_by_id(conn, user.id)?.ok_or(AccountError::NotFound)
}

/// Turns the second factor off for `username` (an administrator's exception, e.g. a shared
/// ward terminal policy); the password alone then gives a full session.
pub fn disable_totp(conn: &Connection, username: &str) -> Result<User, AccountError> {
    let user = find_user(conn, username)?.ok_or(AccountError::NotFound)?;
    conn.execute(
        "UPDATE users SET totp_secret = NULL, totp_pending = NULL, totp_disabled = 1,
                totp_last_step = 0 WHERE id = ?1",
        [user.id],
    )?;
    user_by_id(conn, user.id)?.ok_or(AccountError::NotFound)
}

/// What the account must do after its password was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NextStep {
    /// Enter a TOTP code.
    Totp,
    /// Enrol a TOTP authenticator first (no confirmed secret yet).
    Enroll,
    /// Nothing: TOTP was turned off by an administrator.
    Full,
}

impl User {
    /// The step after a correct password.
    pub fn next_step(&self) -> NextStep {
        if self.totp_disabled {
            NextStep::Full
        } else if self.totp_enrolled {
            NextStep::Totp
        } else {
            NextStep::Enroll
        }
    }

    /// The audit actor for this account.
    pub fn actor(&self) -> String {
        format!("user:{}", self.username)
    }
}

/// Why a login (password or TOTP step) was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Too many attempts from this address in the last minute.
    #[error("too many login attempts from this address; try again in {} seconds", secs_ceil(*.retry_after_ms))]
    RateLimited {
        /// Milliseconds until the next attempt is allowed.
        retry_after_ms: i64,
    },
    /// Too many failed logins from this address.
    #[error("too many failed logins from this address; it is blocked for {} minutes", mins_ceil(*.retry_after_ms))]
    IpBlocked {
        /// Milliseconds until the block ends.
        retry_after_ms: i64,
        /// This attempt caused the block.
        just_blocked: bool,
    },
    /// Wrong user name or password (deliberately not saying which).
    #[error("wrong username or password")]
    InvalidCredentials {
        /// The account, when the user name exists (for the audit log only, never the client).
        account: Option<String>,
    },
    /// Wrong, malformed or replayed TOTP code.
    #[error("wrong or already used authentication code")]
    InvalidTotp,
    /// Too many consecutive failures: the account is locked.
    #[error("this account is locked after too many failed logins; try again in {} minutes", mins_ceil(*.retry_after_ms))]
    AccountLocked {
        /// The locked account.
        account: String,
        /// Milliseconds until the lock ends.
        retry_after_ms: i64,
        /// This attempt caused the lock.
        just_locked: bool,
    },
    /// The account was disabled by an administrator.
    #[error("this account is disabled; contact an administrator")]
    Disabled {
        /// The disabled account.
        account: String,
    },
    /// The server failed.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

fn secs_ceil(ms: i64) -> i64 {
    (ms + 999) / 1000
}

fn mins_ceil(ms: i64) -> i64 {
    (ms + 59_999) / 60_000
}

impl LoginError {
    /// The stable error code sent to the client.
    pub fn code(&self) -> &'static str {
        match self {
            LoginError::RateLimited { .. } => "rate_limited",
            LoginError::IpBlocked { .. } => "ip_blocked",
            LoginError::InvalidCredentials { .. } => "invalid_credentials",
            LoginError::InvalidTotp => "invalid_totp",
            LoginError::AccountLocked { .. } => "account_locked",
            LoginError::Disabled { .. } => "account_disabled",
            LoginError::Internal(_) => "internal",
        }
    }

    /// Milliseconds after which retrying may succeed, for `Retry-After`.
    pub fn retry_after_ms(&self) -> Option<i64> {
        match self {
            LoginError::RateLimited { retry_after_ms }
            | LoginError::IpBlocked { retry_after_ms, .. }
            | LoginError::AccountLocked { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }
}

/// Lockout and session lifetimes, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Consecutive failures (password or TOTP) that lock an account.
    pub max_failures: u32,
    /// How long a lock lasts.
    pub lockout_ms: i64,
    /// A session ends after this long without activity.
    pub idle_ms: i64,
    /// A session ends this long after login.
    pub absolute_ms: i64,
}

impl Policy {
    /// The policy configured in `config.security`.
    pub fn from_config(config: &Config) -> Policy {
        let s = &config.security;
        Policy {
            max_failures: s.login_max_failures_per_account.max(1),
            lockout_ms: minutes_ms(s.login_lockout_minutes),
            idle_ms: minutes_ms(s.session_idle_minutes.max(1)),
            absolute_ms: minutes_ms(s.session_absolute_hours.max(1).saturating_mul(60)),
        }
    }
}

/// Counts a failed login (password or TOTP) against the account. Returns when the lock ends
/// if this failure locked it.
pub fn record_account_failure(
    conn: &Connection,
    user_id: i64,
    policy: &Policy,
    now_ms: i64,
) -> Result<Option<i64>, AccountError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = ?1",
        [user_id],
    )?;
    let failures: i64 = tx.query_row(
        "SELECT failed_logins FROM users WHERE id = ?1",
        [user_id],
        |r| r.get(0),
    )?;
    let locked = if failures >= i64::from(policy.max_failures) {
        let until = now_ms.saturating_add(policy.lockout_ms);
        // The counter restarts, so after the lock ends the account gets a fresh budget.
        tx.execute(
            "UPDATE users SET failed_logins = 0, locked_until_ms = ?2 WHERE id = ?1",
            params![user_id, until],
        )?;
        Some(until)
    } else {
        None
    };
    tx.commit()?;
    Ok(locked)
}

/// Forgets past failures after a successful login.
pub fn record_account_success(conn: &Connection, user_id: i64) -> Result<(), AccountError> {
    conn.execute(
        "UPDATE users SET failed_logins = 0, locked_until_ms = 0 WHERE id = ?1",
        [user_id],
    )?;
    Ok(())
}

/// When the account's lock ends, if it is locked at `now_ms`.
pub fn locked_until(
    conn: &Connection,
    user_id: i64,
    now_ms: i64,
) -> Result<Option<i64>, AccountError> {
    let until: i64 = conn.query_row(
        "SELECT locked_until_ms FROM users WHERE id = ?1",
        [user_id],
        |r| r.get(0),
    )?;
    Ok((until > now_ms).then_some(until))
}

/// Checks `code` against the account's confirmed TOTP secret at `now_ms` and, if it is
/// valid and newer than the last accepted code, records its step (so it cannot be replayed).
pub fn check_totp(
    conn: &Connection,
    user_id: i64,
    code: &str,
    now_ms: i64,
) -> Result<bool, AccountError> {
    let row: Option<(Option<String>, i64)> = conn
        .query_row(
            "SELECT totp_secret, totp_last_step FROM users WHERE id = ?1",
            [user_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((Some(secret), last_step)) = row else {
        return Ok(false);
    };
    let Some(step) = crate::totp::verify(&secret, code, unix_secs(now_ms), last_step) else {
        return Ok(false);
    };
    // Conditional on the old step, so two concurrent requests with the same code cannot
    // both succeed.
    let changed = conn.execute(
        "UPDATE users SET totp_last_step = ?2 WHERE id = ?1 AND totp_last_step < ?2",
        params![user_id, step],
    )?;
    Ok(changed == 1)
}

/// Starts (or restarts) TOTP enrolment: stores a new pending secret and returns it.
pub fn begin_totp_enrolment(conn: &Connection, user_id: i64) -> Result<String, AccountError> {
    let secret = crate::totp::generate_secret();
    let changed = conn.execute(
        "UPDATE users SET totp_pending = ?2 WHERE id = ?1",
        params![user_id, secret],
    )?;
    if changed == 0 {
        return Err(AccountError::NotFound);
    }
    Ok(secret)
}

/// Completes enrolment if `code` matches the pending secret: it becomes the account's secret
/// (and the second factor is on again). Returns false for a wrong code or no pending secret.
pub fn confirm_totp_enrolment(
    conn: &Connection,
    user_id: i64,
    code: &str,
    now_ms: i64,
) -> Result<bool, AccountError> {
    let pending: Option<String> = conn
        .query_row(
            "SELECT totp_pending FROM users WHERE id = ?1",
            [user_id],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let Some(pending) = pending else {
        return Ok(false);
    };
    let Some(step) = crate::totp::verify(&pending, code, unix_secs(now_ms), 0) else {
        return Ok(false);
    };
    let changed = conn.execute(
        "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL, totp_disabled = 0,
                totp_last_step = ?3
         WHERE id = ?1 AND totp_pending = ?2",
        params![user_id, pending, step],
    )?;
    Ok(changed == 1)
}

fn unix_secs(now_ms: i64) -> u64 {
    u64::try_from(now_ms / 1000).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Sessions

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "wardlink_session";

/// How far a session has got through login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Password accepted; only the second factor may follow.
    Password,
    /// Fully authenticated.
    Full,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Password => "password",
            Stage::Full => "full",
        }
    }
}

/// A live session and its account.
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 (hex) of the cookie value.
    pub id_hash: String,
    /// The signed-in account.
    pub user: User,
    /// Login progress.
    pub stage: Stage,
    /// Login time, ms since the epoch.
    pub created_ms: i64,
    /// Last activity before this request, ms since the epoch.
    pub last_seen_ms: i64,
}

/// Why a request's session is not usable.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No session cookie, or one the server does not know.
    #[error("not signed in")]
    Missing,
    /// The session ended (idle or absolute timeout, or the account was disabled).
    #[error("the session has expired; sign in again")]
    Expired {
        /// The account of a fully signed-in session that ended, for the audit log (`None`
        /// for a session still at the password stage or of a deleted account).
        account: Option<String>,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
}

/// SHA-256 of a cookie value, hex: the only form in which sessions are stored.
pub fn session_hash(cookie_value: &str) -> String {
    hex(&Sha256::digest(cookie_value.as_bytes()))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Creates a session for `user_id` at `stage` and returns the cookie value (32 random bytes,
/// base64url) — the only time it exists outside the client.
pub fn create_session(
    conn: &Connection,
    user_id: i64,
    stage: Stage,
    created_ms: i64,
    peer: Option<IpAddr>,
    now_ms: i64,
) -> Result<String, SessionError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let value = URL_SAFE_NO_PAD.encode(bytes);
    conn.execute(
        "INSERT INTO sessions (id_hash, user_id, stage, created_ms, last_seen_ms, peer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            session_hash(&value),
            user_id,
            stage.as_str(),
            created_ms,
            now_ms,
            peer.map(|p| p.to_string())
        ],
    )?;
    Ok(value)
}

/// Looks up the session for `cookie_value` at `now_ms`. Ended sessions (idle, absolute
/// timeout, a password stage left too long, or a disabled account) are deleted and reported
/// as [`SessionError::Expired`]. With `touch`, the idle timer restarts.
pub fn check_session(
    conn: &Connection,
    cookie_value: &str,
    policy: &Policy,
    now_ms: i64,
    touch: bool,
) -> Result<Session, SessionError> {
    let id_hash = session_hash(cookie_value);
    let row: Option<(i64, String, i64, i64)> = conn
        .query_row(
            "SELECT user_id, stage, created_ms, last_seen_ms FROM sessions WHERE id_hash = ?1",
            [&id_hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((user_id, stage, created_ms, last_seen_ms)) = row else {
        return Err(SessionError::Missing);
    };
    let stage = if stage == "full" {
        Stage::Full
    } else {
        Stage::Password
    };
    let user = user_by_id(conn, user_id).map_err(|e| match e {
        AccountError::Database(e) => SessionError::Database(e),
        _ => SessionError::Missing,
    })?;
    let expired = match &user {
        None => true,
        Some(u) if u.disabled => true,
        Some(_) => session_expired(policy, stage, created_ms, last_seen_ms, now_ms),
    };
    if expired {
        conn.execute("DELETE FROM sessions WHERE id_hash = ?1", [&id_hash])?;
        return Err(SessionError::Expired {
            account: user.filter(|_| stage == Stage::Full).map(|u| u.username),
        });
    }
    if touch {
        conn.execute(
            "UPDATE sessions SET last_seen_ms = max(last_seen_ms, ?2) WHERE id_hash = ?1",
            params![id_hash, now_ms],
        )?;
    }
    Ok(Session {
        id_hash,
        user: user.ok_or(SessionError::Missing)?,
        stage,
        created_ms,
        last_seen_ms,
    })
}

/// Whether a session with these times has ended at `now_ms`.
pub fn session_expired(
    policy: &Policy,
    stage: Stage,
    created_ms: i64,
    last_seen_ms: i64,
    now_ms: i64,
) -> bool {
    let absolute = match stage {
        Stage::Full => policy.absolute_ms,
        Stage::Password => policy.absolute_ms.min(PASSWORD_STAGE_MS),
    };
    now_ms.saturating_sub(last_seen_ms) >= policy.idle_ms
        || now_ms.saturating_sub(created_ms) >= absolute
}

/// Raises a session to [`Stage::Full`] under a new cookie value (so a value seen before the
/// second factor is worthless after it) and returns the new value.
pub fn promote_session(
    conn: &Connection,
    session: &Session,
    peer: Option<IpAddr>,
    now_ms: i64,
) -> Result<String, SessionError> {
    let tx = conn.unchecked_transaction()?;
    let deleted = tx.execute(
        "DELETE FROM sessions WHERE id_hash = ?1",
        [&session.id_hash],
    )?;
    if deleted == 0 {
        // Logged out (or promoted by a concurrent request) meanwhile.
        return Err(SessionError::Missing);
    }
    let value = create_session(
        &tx,
        session.user.id,
        Stage::Full,
        session.created_ms,
        peer,
        now_ms,
    )?;
    tx.commit()?;
    Ok(value)
}

/// Ends the session for `cookie_value`, if any.
pub fn delete_session(conn: &Connection, cookie_value: &str) -> Result<(), SessionError> {
    conn.execute(
        "DELETE FROM sessions WHERE id_hash = ?1",
        [session_hash(cookie_value)],
    )?;
    Ok(())
}

/// Ends every session of an account.
pub fn delete_user_sessions(conn: &Connection, user_id: i64) -> Result<(), rusqlite::Error> {
    conn.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?;
    Ok(())
}

/// Deletes sessions that have ended by `now_ms` (they are refused anyway; this keeps the
/// table small).
pub fn purge_expired_sessions(
    conn: &Connection,
    policy: &Policy,
    now_ms: i64,
) -> Result<usize, rusqlite::Error> {
    conn.execute(
        "DELETE FROM sessions WHERE last_seen_ms <= ?1 OR created_ms <= ?2
            OR (stage = 'password' AND created_ms <= ?3)",
        params![
            now_ms.saturating_sub(policy.idle_ms),
            now_ms.saturating_sub(policy.absolute_ms),
            now_ms.saturating_sub(PASSWORD_STAGE_MS)
        ],
    )
}

// ---------------------------------------------------------------------------------------
// The async front: Argon2 off the executor, address limits in memory.

/// Login and session handling for the HTTP API. Cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    store: Store,
    policy: Policy,
    limiter: Arc<LoginLimiter>,
}

impl Accounts {
    /// Accounts in `store` with the limits and lifetimes of `config`.
    pub fn new(store: Store, config: &Config) -> Accounts {
        Accounts {
            store,
            policy: Policy::from_config(config),
            limiter: Arc::new(LoginLimiter::new(config)),
        }
    }

    /// The lockout and session policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The store the accounts live in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checks a user name and password from `peer` at `now_ms`.
    ///
    /// Order matters: address limits first (cheap, and they must hold even for unknown
    /// names), then the account lock, then the password. Unknown names are checked against
    /// a dummy hash, so they cost the same time and give the same answer as a wrong
    /// password. A disabled account is only reported after a correct password, so the
    /// answer does not reveal which names exist.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
        peer: IpAddr,
        now_ms: i64,
    ) -> Result<User, LoginError> {
        self.limiter
            .begin_attempt(peer, now_ms)
            .map_err(|r| self.refusal(r, now_ms))?;
        let name = username.trim().to_ascii_lowercase();
        let account = self
            .store
            .call(move |conn| {
                let user = find_user(conn, &name)?;
                let hash: Option<String> = match &user {
                    Some(u) => Some(conn.query_row(
                        "SELECT password_hash FROM users WHERE id = ?1",
                        [u.id],
                        |r| r.get(0),
                    )?),
                    None => None,
                };
                let lock = match &user {
                    Some(u) => locked_until(conn, u.id, now_ms)?,
                    None => None,
                };
                Ok((user, hash, lock))
            })
            .await?;
        let (user, hash, lock) = account;
        if let (Some(user), Some(until)) = (&user, lock) {
            return Err(LoginError::AccountLocked {
                account: user.username.clone(),
                retry_after_ms: until - now_ms,
                just_locked: false,
            });
        }
        let password = password.to_owned();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(|e| anyhow::anyhow!("password check failed: {e}"))?;
        let Some(user) = user else {
            // `matches` is false here unless someone knows the dummy password; either way
            // an unknown name never logs in.
            self.address_failure(peer, now_ms)?;
            return Err(LoginError::InvalidCredentials { account: None });
        };
        if !matches {
            self.address_failure(peer, now_ms)?;
            return Err(self.account_failure(&user, now_ms).await?);
        }
        if user.disabled {
            return Err(LoginError::Disabled {
                account: user.username,
            });
        }
        let id = user.id;
        let policy = self.policy;
        self.store
            .call(move |conn| {
                record_account_success(conn, id)?;
                purge_expired_sessions(conn, &policy, now_ms)?;
                Ok(())
            })
            .await?;
        Ok(user)
    }

    /// Checks a TOTP code for a session at the password stage. A wrong code counts as a
    /// failed login for the account and the address, like a wrong password.
    pub async fn verify_totp(
        &self,
        user: &User,
        code: &str,
        peer: IpAddr,
        now_ms: i64,
    ) -> Result<(), LoginError> {
        self.limiter
            .begin_attempt(peer, now_ms)
            .map_err(|r| self.refusal(r, now_ms))?;
        let (id, code_owned) = (user.id, code.to_owned());
        let (lock, ok) = self
            .store
            .call(move |conn| {
                if let Some(until) = locked_until(conn, id, now_ms)? {
                    return Ok((Some(until), false));
                }
                Ok((None, check_totp(conn, id, &code_owned, now_ms)?))
            })
            .await?;
        if let Some(until) = lock {
            return Err(LoginError::AccountLocked {
                account: user.username.clone(),
                retry_after_ms: until - now_ms,
                just_locked: false,
            });
        }
        if !ok {
            self.address_failure(peer, now_ms)?;
            return match self.account_failure(user, now_ms).await? {
                LoginError::InvalidCredentials { .. } => Err(LoginError::InvalidTotp),
                other => Err(other),
            };
        }
        self.store
            .call(move |conn| Ok(record_account_success(conn, id)?))
            .await?;
        Ok(())
    }

    fn refusal(&self, r: AddressRefusal, now_ms: i64) -> LoginError {
        match r {
            AddressRefusal::RateLimited { retry_after_ms } => {
                LoginError::RateLimited { retry_after_ms }
            }
            AddressRefusal::Blocked { until_ms } => LoginError::IpBlocked {
                retry_after_ms: until_ms - now_ms,
                just_blocked: false,
            },
        }
    }

    fn address_failure(&self, peer: IpAddr, now_ms: i64) -> Result<(), LoginError> {
        match self.limiter.record_failure(peer, now_ms) {
            // The failure that uses up the address's budget is answered as a block, so the
            // client learns at once why the next attempts will fail.
            Some(until) => Err(LoginError::IpBlocked {
                retry_after_ms: until - now_ms,
                just_blocked: true,
            }),
            None => Ok(()),
        }
    }

    /// Counts a failure against `user`; returns the error to answer with.
    async fn account_failure(&self, user: &User, now_ms: i64) -> Result<LoginError, LoginError> {
        let (id, policy) = (user.id, self.policy);
        let locked = self
            .store
            .call(move |conn| Ok(record_account_failure(conn, id, &policy, now_ms)?))
            .await?;
        Ok(match locked {
            Some(until) => LoginError::AccountLocked {
                account: user.username.clone(),
                retry_after_ms: until - now_ms,
                just_locked: true,
            },
            None => LoginError::InvalidCredentials {
                account: Some(user.username.clone()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn new_user(name: &str) -> NewUser {
        NewUser {
            username: name.into(),
            display_name: "佐藤 花子".into(),
            profession: Profession::Nurse,
            is_admin: false,
            password: "correct horse battery".into(),
        }
    }

    fn config() -> Config {
        let mut c = Config::default();
        c.security.login_max_failures_per_account = 3;
        c.security.login_max_failures_per_ip = 100;
        c.security.login_lockout_minutes = 15;
        c.limits.logins_per_minute_per_ip = 1000;
        c
    }

    fn peer() -> IpAddr {
        "192.0.2.10".parse().unwrap()
    }

    #[test]
    fn dummy_hash_uses_the_default_parameters() {
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        let params = argon2::Params::try_from(&parsed).unwrap();
        let default = argon2::Params::default();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (default.m_cost(), default.t_cost(), default.p_cost())
        );
        assert_eq!(
            parsed.hash.map(|h| h.len()),
            Some(argon2::Params::DEFAULT_OUTPUT_LEN)
        );
        assert!(!verify_password("", DUMMY_HASH));
        assert_eq!(parsed.algorithm, argon2::Algorithm::Argon2id.ident());
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("x", "not a hash"));
        assert_ne!(
            hash,
            hash_password("correct horse battery").unwrap(),
            "salted"
        );
    }

    #[test]
    fn validation() {
        assert_eq!(validate_username("  Nurse.Sato ").unwrap(), "nurse.sato");
        for bad in ["ab", "-abc", "a b c", "佐藤さん", &"a".repeat(65)] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
        assert!(validate_display_name(" ").is_err());
        assert!(validate_display_name("a\nb").is_err());
        assert!(validate_password("short").is_err());
        assert!(
            validate_password("１２３４５６７８９０１２").is_ok(),
            "12 characters, any script"
        );
        assert!(validate_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn create_list_disable_and_duplicate_users() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        let u = create_user(&conn, &new_user("Sato"), T0).unwrap();
        assert_eq!(u.username, "sato");
        assert_eq!(u.next_step(), NextStep::Enroll);
        assert!(matches!(
            create_user(&conn, &new_user("sato"), T0),
            Err(AccountError::UsernameTaken)
        ));
        let mut weak = new_user("tanaka");
        weak.password = "short".into();
        assert!(matches!(
            create_user(&conn, &weak, T0),
            Err(AccountError::WeakPassword(_))
        ));
        let stored: String = conn
            .query_row("SELECT password_hash FROM users", [], |r| r.get(0))
            .unwrap();
        assert!(!stored.contains("correct horse"));
        let s = create_session(&conn, u.id, Stage::Full, T0, None, T0).unwrap();
        assert!(disable_user(&conn, "SATO").unwrap().disabled);
        assert!(matches!(
            check_session(&conn, &s, &Policy::from_config(&config()), T0, false),
            Err(SessionError::Missing)
        ));
        assert_eq!(list_users(&conn).unwrap().len(), 1);
        assert!(matches!(
            disable_user(&conn, "nobody"),
            Err(AccountError::NotFound)
        ));
    }

    #[tokio::test]
    async fn authentication_outcomes_and_account_lockout() {
        let store = Store::open_in_memory().unwrap();
        create_user(&store.lock(), &new_user("sato"), T0).unwrap();
        let accounts = Accounts::new(store.clone(), &config());

        let ok = accounts
            .authenticate("SATO", "correct horse battery", peer(), T0)
            .await
            .unwrap();
        assert_eq!(ok.username, "sato");

        // Unknown names and wrong passwords get the same answer.
        let unknown = accounts
            .authenticate("nobody", "whatever", peer(), T0)
            .await
            .unwrap_err();
        assert!(matches!(
            unknown,
            LoginError::InvalidCredentials { account: None }
        ));
        let wrong = accounts
            .authenticate("sato", "wrong", peer(), T0)
            .await
            .unwrap_err();
        assert!(
            matches!(&wrong, LoginError::InvalidCredentials { account: Some(a) } if a == "sato")
        );
        assert_eq!(
            (unknown.code(), unknown.to_string()),
            (wrong.code(), wrong.to_string())
        );

        // A success resets the count: two more failures do not lock ...
        accounts
            .authenticate("sato", "correct horse battery", peer(), T0)
            .await
            .unwrap();
        for _ in 0..2 {
            let e = accounts
                .authenticate("sato", "wrong", peer(), T0)
                .await
                .unwrap_err();
            assert_eq!(e.code(), "invalid_credentials");
        }
        // ... the third consecutive one does.
        let e = accounts
            .authenticate("sato", "wrong", peer(), T0 + 1)
            .await
            .unwrap_err();
        match &e {
            LoginError::AccountLocked {
                just_locked,
                retry_after_ms,
                ..
            } => {
                assert!(*just_locked);
                assert_eq!(*retry_after_ms, 15 * 60_000);
            }
            other => panic!("expected a lock, got {other:?}"),
        }
        assert!(e.to_string().contains("15 minutes"), "{e}");
        // While locked, even the right password is refused.
        let e = accounts
            .authenticate("sato", "correct horse battery", peer(), T0 + 60_000)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                LoginError::AccountLocked {
                    just_locked: false,
                    ..
                }
            ),
            "{e:?}"
        );
        // After the lockout period it works again.
        accounts
            .authenticate(
                "sato",
                "correct horse battery",
                peer(),
                T0 + 1 + 15 * 60_000,
            )
            .await
            .unwrap();

        // A disabled account is reported only with the right password.
        disable_user(&store.lock(), "sato").unwrap();
        let later = T0 + 3_600_000;
        let e = accounts
            .authenticate("sato", "wrong", peer(), later)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_credentials");
        let e = accounts
            .authenticate("sato", "correct horse battery", peer(), later)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "account_disabled");
    }

    #[tokio::test]
    async fn addresses_are_blocked_and_rate_limited() {
        let store = Store::open_in_memory().unwrap();
        create_user(&store.lock(), &new_user("sato"), T0).unwrap();
        let mut c = config();
        c.security.login_max_failures_per_ip = 2;
        c.limits.logins_per_minute_per_ip = 5;
        let accounts = Accounts::new(store, &c);
        let e = accounts
            .authenticate("a-nobody", "x", peer(), T0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_credentials");
        let e = accounts
            .authenticate("b-nobody", "x", peer(), T0)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                LoginError::IpBlocked {
                    just_blocked: true,
                    ..
                }
            ),
            "{e:?}"
        );
        // Blocked even for a correct password, but only this address.
        let e = accounts
            .authenticate("sato", "correct horse battery", peer(), T0 + 1)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "ip_blocked");
        let other: IpAddr = "192.0.2.11".parse().unwrap();
        accounts
            .authenticate("sato", "correct horse battery", other, T0)
            .await
            .unwrap();
        // The attempt rate: 5 per minute from `other`, one used above.
        for _ in 0..4 {
            let _ = accounts
                .authenticate("sato", "correct horse battery", other, T0 + 2)
                .await;
        }
        let e = accounts
            .authenticate("sato", "correct horse battery", other, T0 + 3)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "rate_limited");
        assert!(e.retry_after_ms().unwrap() > 0);
    }

    #[tokio::test]
    async fn totp_codes_count_towards_the_lockout_and_are_not_replayable() {
        let store = Store::open_in_memory().unwrap();
        let user = create_user(&store.lock(), &new_user("sato"), T0).unwrap();
        let secret = begin_totp_enrolment(&store.lock(), user.id).unwrap();
        let step = crate::totp::step_at(unix_secs(T0));
        let code = crate::totp::code_at_step(&secret, step).unwrap();
        assert!(
            !confirm_totp_enrolment(&store.lock(), user.id, "000000", T0).unwrap()
                || code == "000000"
        );
        assert!(confirm_totp_enrolment(&store.lock(), user.id, &code, T0).unwrap());
        let user = find_user(&store.lock(), "sato").unwrap().unwrap();
        assert_eq!(user.next_step(), NextStep::Totp);

        let accounts = Accounts::new(store.clone(), &config());
        // The code used to confirm enrolment cannot be used to log in.
        let e = accounts
            .verify_totp(&user, &code, peer(), T0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_totp");
        let next = crate::totp::code_at_step(&secret, step + 1).unwrap();
        accounts
            .verify_totp(&user, &next, peer(), T0)
            .await
            .unwrap();
        let e = accounts
            .verify_totp(&user, &next, peer(), T0 + 1000)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_totp", "replay");
        // Three wrong codes in a row lock the account (the replay above was one).
        let e = accounts
            .verify_totp(&user, "123456x", peer(), T0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_totp");
        let e = accounts
            .verify_totp(&user, "", peer(), T0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "account_locked");

        // Reset forgets the secret; disabling TOTP skips the second factor.
        let u = reset_totp(&store.lock(), "sato").unwrap();
        assert_eq!(u.next_step(), NextStep::Enroll);
        let u = disable_totp(&store.lock(), "sato").unwrap();
        assert_eq!(u.next_step(), NextStep::Full);
        // Enrolling again turns it back on.
        let secret = begin_totp_enrolment(&store.lock(), u.id).unwrap();
        let code = crate::totp::code_at_step(&secret, step).unwrap();
        assert!(confirm_totp_enrolment(&store.lock(), u.id, &code, T0).unwrap());
        assert_eq!(
            find_user(&store.lock(), "sato")
                .unwrap()
                .unwrap()
                .next_step(),
            NextStep::Totp
        );
    }

    #[test]
    fn sessions_expire_when_idle_and_absolutely() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        let user = create_user(&conn, &new_user("sato"), T0).unwrap();
        let policy = Policy::from_config(&config());
        assert_eq!(policy.idle_ms, 15 * 60_000);
        assert_eq!(policy.absolute_ms, 12 * 3_600_000);

        let cookie = create_session(&conn, user.id, Stage::Full, T0, Some(peer()), T0).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(&cookie).unwrap().len(), 32);
        // Only the hash is stored.
        let stored: String = conn
            .query_row("SELECT id_hash FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, session_hash(&cookie));
        assert_ne!(stored, cookie);

        // Activity every 14 minutes keeps it alive ...
        let mut now = T0;
        for _ in 0..10 {
            now += 14 * 60_000;
            let s = check_session(&conn, &cookie, &policy, now, true).unwrap();
            assert_eq!(s.stage, Stage::Full);
        }
        // ... a read without touching does not refresh it ...
        assert!(check_session(&conn, &cookie, &policy, now + 14 * 60_000, false).is_ok());
        // ... and 15 idle minutes end it, for good.
        assert!(matches!(
            check_session(&conn, &cookie, &policy, now + 15 * 60_000, true),
            Err(SessionError::Expired { account: Some(a) }) if a == "sato"
        ));
        assert!(matches!(
            check_session(&conn, &cookie, &policy, now, true),
            Err(SessionError::Missing)
        ));

        // However active, a session ends 12 hours after login.
        let cookie = create_session(&conn, user.id, Stage::Full, T0, None, T0).unwrap();
        let mut now = T0;
        while now + 10 * 60_000 < T0 + policy.absolute_ms {
            now += 10 * 60_000;
            check_session(&conn, &cookie, &policy, now, true).unwrap();
        }
        assert!(matches!(
            check_session(&conn, &cookie, &policy, T0 + policy.absolute_ms, true),
            Err(SessionError::Expired { .. })
        ));

        // A password-stage session lasts at most 10 minutes.
        let half = create_session(&conn, user.id, Stage::Password, T0, None, T0).unwrap();
        assert!(check_session(&conn, &half, &policy, T0 + 9 * 60_000, true).is_ok());
        assert!(matches!(
            check_session(&conn, &half, &policy, T0 + PASSWORD_STAGE_MS, true),
            Err(SessionError::Expired { account: None })
        ));

        // Unknown cookies are simply missing.
        assert!(matches!(
            check_session(&conn, "nope", &policy, T0, true),
            Err(SessionError::Missing)
        ));
    }

    #[test]
    fn promotion_rotates_the_cookie_and_purge_removes_ended_sessions() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        let user = create_user(&conn, &new_user("sato"), T0).unwrap();
        let policy = Policy::from_config(&config());
        let half = create_session(&conn, user.id, Stage::Password, T0, None, T0).unwrap();
        let s = check_session(&conn, &half, &policy, T0 + 1000, true).unwrap();
        let full = promote_session(&conn, &s, None, T0 + 2000).unwrap();
        assert_ne!(full, half);
        assert!(check_session(&conn, &half, &policy, T0 + 3000, true).is_err());
        let s = check_session(&conn, &full, &policy, T0 + 3000, true).unwrap();
        assert_eq!((s.stage, s.created_ms), (Stage::Full, T0));
        // Promoting a session that is gone fails.
        delete_session(&conn, &full).unwrap();
        assert!(matches!(
            promote_session(&conn, &s, None, T0),
            Err(SessionError::Missing)
        ));

        let _old = create_session(&conn, user.id, Stage::Full, T0, None, T0).unwrap();
        let live = create_session(&conn, user.id, Stage::Full, T0, None, T0 + 20 * 60_000).unwrap();
        assert_eq!(
            purge_expired_sessions(&conn, &policy, T0 + 20 * 60_000).unwrap(),
            1
        );
        assert!(check_session(&conn, &live, &policy, T0 + 21 * 60_000, false).is_ok());
    }
}
