//! The staff HTTP API under `/api`: login (password, then TOTP), TOTP enrolment, sessions,
//! account administration and conference scheduling. JSON in and out; errors are
//! `{"code": "...", "message": "..."}` with a matching HTTP status.
//!
//! Routes (all `POST` bodies are JSON; `*` needs a full session, `A` an administrator):
//!
//! | route | |
//! |---|---|
//! | `POST /api/login` `{username, password}` | → `{stage: "totp" \| "enroll" \| "full"}` + session cookie |
//! | `POST /api/login/totp` `{code}` | password stage → full |
//! | `POST /api/totp/enroll` | → `{otpauth_uri, qr_svg, secret}` (password stage only before the first enrolment) |
//! | `POST /api/totp/confirm` `{code}` | enrolment done; password stage → full |
//! | `POST /api/logout` | ends the session |
//! | `GET /api/me` * | → `{username, display_name, profession, is_admin, idle_timeout_secs, ...}` |
//! | `POST /api/session/ping` * | keeps the session alive (the UI calls it on real user activity) |
//! | `POST /api/admin/users` A | create an account |
//! | `GET /api/admin/users` A | list accounts |
//! | `POST /api/admin/users/{username}/disable` A | disable an account |
//! | `POST /api/admin/users/{username}/totp-reset` A | forget its TOTP: re-enrol at next login |
//! | `POST /api/admin/users/{username}/totp-disable` A | turn its second factor off |
//! | `POST /api/conferences` * `{title, scheduled_at, invitations: [{role, display_name}]}` | schedule a conference |
//! | `GET /api/conferences` * | my upcoming conferences |
//! | `POST /api/invitations/{id}/revoke` * | revoke an invitation (its conference's creator or an admin) |
//!
//! Cross-site requests: the session cookie is `SameSite=Strict`, and every `POST` must carry
//! `Content-Type: application/json` (which a cross-site form cannot send without a CORS
//! preflight, and no CORS is allowed) and an `Origin` naming this server.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use wardlink_signaling::role::Role;

use crate::accounts::{
    self, AccountError, LoginError, NewUser, NextStep, Profession, Session, SessionError, Stage,
    User, SESSION_COOKIE,
};
use crate::audit::AuditEvent;
use crate::conferences::{self, ConferenceError, InvitationSpec, InvitationWindow, RevokeError};
use crate::server::AppState;
use crate::store::now_ms;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The `/api` routes, with the cross-site request guard.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/login", post(login))
        .route("/api/login/totp", post(login_totp))
        .route("/api/totp/enroll", post(totp_enroll))
        .route("/api/totp/confirm", post(totp_confirm))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/session/ping", post(ping))
        .route("/api/admin/users", post(create_user).get(list_users))
        .route("/api/admin/users/{username}/disable", post(disable_user))
        .route("/api/admin/users/{username}/totp-reset", post(reset_totp))
        .route(
            "/api/admin/users/{username}/totp-disable",
            post(disable_totp),
        )
        .route(
            "/api/conferences",
            post(create_conference).get(list_conferences),
        )
        .route("/api/invitations/{id}/revoke", post(revoke_invitation))
        .route("/api", any(unknown_route))
        .route("/api/{*rest}", any(unknown_route))
        .layer(middleware::from_fn_with_state(state, guard))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

// ---------------------------------------------------------------------------------------
// Errors

/// An API error: HTTP status plus the JSON body `{code, message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<i64>,
    clear_cookie: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            clear_cookie: false,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message)
    }

    fn internal(e: impl std::fmt::Display) -> ApiError {
        // The detail goes to the server log only.
        tracing::error!(error = %e, "staff API internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed; try again",
        )
    }

    fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({ "code": self.code, "message": self.message })),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.clear_cookie {
            response
                .headers_mut()
                .append(header::SET_COOKIE, clear_cookie());
        }
        response
    }
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> Self {
        let status = match &e {
            LoginError::RateLimited { .. } | LoginError::IpBlocked { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            LoginError::InvalidCredentials { .. } | LoginError::InvalidTotp => {
                StatusCode::UNAUTHORIZED
            }
            LoginError::AccountLocked { .. } => StatusCode::LOCKED,
            LoginError::Disabled { .. } => StatusCode::FORBIDDEN,
            LoginError::Internal(e) => return ApiError::internal(e),
        };
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
            retry_after_secs: e.retry_after_ms().map(|ms| (ms + 999) / 1000),
            clear_cookie: false,
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::InvalidUsername(_)
            | AccountError::InvalidDisplayName(_)
            | AccountError::WeakPassword(_) => ApiError::bad_request(e.to_string()),
            AccountError::UsernameTaken => {
                ApiError::new(StatusCode::CONFLICT, "username_taken", e.to_string())
            }
            AccountError::NotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such user")
            }
            AccountError::Database(_) | AccountError::Hash(_) => ApiError::internal(e),
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Missing => ApiError {
                clear_cookie: true,
                ..ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "not_authenticated",
                    "sign in first",
                )
            },
            SessionError::Expired { .. } => ApiError {
                clear_cookie: true,
                ..ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "session_expired",
                    "the session has expired; sign in again",
                )
            },
            SessionError::Database(e) => ApiError::internal(e),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(format!("{e:#}"))
    }
}

type ApiResult = Result<Response, ApiError>;

async fn unknown_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API route")
}

// ---------------------------------------------------------------------------------------
// Request guard, cookies, sessions

/// Refuses cross-site `POST`s and marks every response uncacheable.
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let headers = request.headers();
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "requests must be sent as Content-Type: application/json",
            )
            .into_response();
        }
        if !same_origin(&state, headers, request.uri()) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "bad_origin",
                "cross-origin request refused",
            )
            .into_response();
        }
    }
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// True when the request's `Origin` is this server (by the addressed host, `public_url` or
/// `security.allowed_origins`). A missing `Origin` is refused: browsers always send it on
/// `POST`, so only a non-browser client omits it, and those can add it.
fn same_origin(state: &AppState, headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    if headers.get(header::ORIGIN).is_none() {
        return false;
    }
    let host = crate::http::request_host(headers, uri);
    crate::http::origin_allowed(
        headers,
        host,
        state.config.public_url.as_deref(),
        &state.config.security.allowed_origins,
    )
}

/// `Set-Cookie` for a new session value.
fn session_cookie(value: &str) -> HeaderValue {
    // The value is base64url, always a valid header value.
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; HttpOnly; Secure; SameSite=Strict; Path=/"
    ))
    .unwrap_or_else(|_| clear_cookie())
}

fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "wardlink_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0",
    )
}

/// The session cookie's value, if the request has one.
pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// Which sessions a route accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Password stage or full (the second-factor routes).
    Any,
    /// Fully authenticated.
    Full,
    /// Fully authenticated administrator.
    Admin,
}

/// The request's session, checked (and its idle timer restarted) at the current time.
async fn session(state: &AppState, headers: &HeaderMap, need: Need) -> Result<Session, ApiError> {
    let Some(cookie) = cookie_value(headers) else {
        return Err(SessionError::Missing.into());
    };
    let policy = *state.accounts.policy();
    let now = now_ms();
    let checked = state
        .store
        .call(move |conn| Ok(accounts::check_session(conn, &cookie, &policy, now, true)))
        .await?;
    let session = match checked {
        Ok(session) => session,
        Err(SessionError::Expired {
            account: Some(account),
        }) => {
            // The first request after a timeout is when the server notices it; sessions
            // nobody comes back to are purged at the next login without an entry.
            audit(
                state,
                format!("user:{account}"),
                "logout",
                None,
                None,
                json!({ "reason": "expired" }),
            )
            .await?;
            return Err(SessionError::Expired { account: None }.into());
        }
        Err(e) => return Err(e.into()),
    };
    if need != Need::Any && session.stage != Stage::Full {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "totp_required",
            "finish signing in with your authentication code first",
        ));
    }
    if need == Need::Admin && !session.user.is_admin {
        return Err(ApiError::forbidden("administrators only"));
    }
    Ok(session)
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

async fn audit(
    state: &AppState,
    actor: String,
    action: &'static str,
    conference: Option<String>,
    peer: Option<IpAddr>,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    state
        .audit
        .record_async(AuditEvent {
            actor,
            action,
            conference,
            peer,
            detail,
        })
        .await
        .map_err(|e| ApiError::internal(format!("cannot write the audit log: {e:#}")))
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

fn with_cookie(mut response: Response, value: &str) -> Response {
    response
        .headers_mut()
        .append(header::SET_COOKIE, session_cookie(value));
    response
}

// ---------------------------------------------------------------------------------------
// Login

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct CodeBody {
    code: String,
}

async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult {
    let body: LoginBody = parse(&body)?;
    let ip = peer.ip();
    let now = now_ms();
    let user = match state
        .accounts
        .authenticate(&body.username, &body.password, ip, now)
        .await
    {
        Ok(user) => user,
        Err(e) => {
            audit_login_failure(&state, &e, ip).await?;
            return Err(e.into());
        }
    };
    let next = user.next_step();
    let stage = if next == NextStep::Full {
        Stage::Full
    } else {
        Stage::Password
    };
    let id = user.id;
    let cookie = state
        .store
        .call(move |conn| {
            Ok(accounts::create_session(
                conn,
                id,
                stage,
                now,
                Some(ip),
                now,
            )?)
        })
        .await?;
    if stage == Stage::Full {
        audit(
            &state,
            user.actor(),
            "login_succeeded",
            None,
            Some(ip),
            json!({ "factors": ["password"], "totp": "disabled_by_admin" }),
        )
        .await?;
    }
    Ok(with_cookie(
        json_response(StatusCode::OK, json!({ "stage": next })),
        &cookie,
    ))
}

/// Audits a refused login. Refusals that happen before any credential is looked at (rate
/// limit, an address already blocked) are only logged: auditing each would let a flood of
/// requests flood the audit log.
async fn audit_login_failure(state: &AppState, e: &LoginError, ip: IpAddr) -> Result<(), ApiError> {
    let (actor, reason) = match e {
        LoginError::RateLimited { .. }
        | LoginError::IpBlocked {
            just_blocked: false,
            ..
        } => {
            tracing::warn!(%ip, code = e.code(), "login refused");
            return Ok(());
        }
        LoginError::Internal(_) => return Ok(()),
        LoginError::InvalidCredentials { account } => (
            account
                .as_ref()
                .map_or_else(|| "anonymous".to_owned(), |a| format!("user:{a}")),
            e.code(),
        ),
        LoginError::AccountLocked { account, .. } | LoginError::Disabled { account } => {
            (format!("user:{account}"), e.code())
        }
        LoginError::IpBlocked { .. } | LoginError::InvalidTotp => {
            ("anonymous".to_owned(), e.code())
        }
    };
    audit(
        state,
        actor.clone(),
        "login_failed",
        None,
        Some(ip),
        json!({ "reason": reason }),
    )
    .await?;
    match e {
        LoginError::AccountLocked {
            just_locked: true,
            retry_after_ms,
            ..
        } => {
            audit(
                state,
                actor,
                "account_locked",
                None,
                Some(ip),
                json!({ "scope": "account", "minutes": (retry_after_ms + 59_999) / 60_000 }),
            )
            .await
        }
        LoginError::IpBlocked {
            just_blocked: true,
            retry_after_ms,
        } => {
            audit(
                state,
                "system".to_owned(),
                "account_locked",
                None,
                Some(ip),
                json!({ "scope": "address", "minutes": (retry_after_ms + 59_999) / 60_000 }),
            )
            .await
        }
        _ => Ok(()),
    }
}

async fn login_totp(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let session = session(&state, &headers, Need::Any).await?;
    let body: CodeBody = parse(&body)?;
    if session.stage == Stage::Full {
        return Ok(json_response(StatusCode::OK, json!({ "stage": "full" })));
    }
    if session.user.next_step() != NextStep::Totp {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "enrollment_required",
            "set up an authenticator app first (POST /api/totp/enroll)",
        ));
    }
    let ip = peer.ip();
    let now = now_ms();
    if let Err(e) = state
        .accounts
        .verify_totp(&session.user, &body.code, ip, now)
        .await
    {
        let e = match e {
            // The audit line names the account: the password was right.
            LoginError::InvalidTotp => {
                audit(
                    &state,
                    session.user.actor(),
                    "login_failed",
                    None,
                    Some(ip),
                    json!({ "reason": "invalid_totp" }),
                )
                .await?;
                e
            }
            other => {
                audit_login_failure(&state, &other, ip).await?;
                other
            }
        };
        if matches!(e, LoginError::AccountLocked { .. }) {
            // A locked account keeps no half-open session.
            let id = session.user.id;
            state
                .store
                .call(move |conn| Ok(accounts::delete_user_sessions(conn, id)?))
                .await?;
        }
        return Err(e.into());
    }
    let cookie = promote(&state, &session, ip, now).await?;
    audit(
        &state,
        session.user.actor(),
        "login_succeeded",
        None,
        Some(ip),
        json!({ "factors": ["password", "totp"] }),
    )
    .await?;
    Ok(with_cookie(
        json_response(StatusCode::OK, json!({ "stage": "full" })),
        &cookie,
    ))
}

async fn promote(
    state: &AppState,
    session: &Session,
    ip: IpAddr,
    now: i64,
) -> Result<String, ApiError> {
    let session = session.clone();
    Ok(state
        .store
        .call(move |conn| Ok(accounts::promote_session(conn, &session, Some(ip), now)))
        .await??)
}

/// Only a fully signed-in user may replace an enrolled authenticator: otherwise a stolen
/// password would be enough to enrol the thief's phone.
fn may_enroll(session: &Session) -> Result<(), ApiError> {
    if session.stage == Stage::Password && session.user.totp_enrolled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "totp_required",
            "enter the code from your enrolled authenticator first",
        ));
    }
    Ok(())
}

async fn totp_enroll(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    let session = session(&state, &headers, Need::Any).await?;
    may_enroll(&session)?;
    let id = session.user.id;
    let secret = state
        .store
        .call(move |conn| Ok(accounts::begin_totp_enrolment(conn, id)?))
        .await?;
    let uri = crate::totp::otpauth_uri(&session.user.username, &secret);
    let svg = crate::totp::qr_svg(&uri)?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "otpauth_uri": uri, "qr_svg": svg, "secret": secret }),
    ))
}

async fn totp_confirm(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let session = session(&state, &headers, Need::Any).await?;
    may_enroll(&session)?;
    let body: CodeBody = parse(&body)?;
    let (id, now, ip) = (session.user.id, now_ms(), peer.ip());
    let ok = state
        .store
        .call(move |conn| Ok(accounts::confirm_totp_enrolment(conn, id, &body.code, now)?))
        .await?;
    if !ok {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_totp",
            "the code does not match; check the time on your phone and try the next code",
        ));
    }
    audit(
        &state,
        session.user.actor(),
        "totp_enrolled",
        None,
        Some(ip),
        json!({}),
    )
    .await?;
    if session.stage == Stage::Full {
        return Ok(json_response(StatusCode::OK, json!({ "stage": "full" })));
    }
    let cookie = promote(&state, &session, ip, now).await?;
    audit(
        &state,
        session.user.actor(),
        "login_succeeded",
        None,
        Some(ip),
        json!({ "factors": ["password", "totp"], "enrolled": true }),
    )
    .await?;
    Ok(with_cookie(
        json_response(StatusCode::OK, json!({ "stage": "full" })),
        &cookie,
    ))
}

async fn logout(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult {
    let mut response = json_response(StatusCode::OK, json!({ "ok": true }));
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie());
    let Some(cookie) = cookie_value(&headers) else {
        return Ok(response);
    };
    let session = session(&state, &headers, Need::Any).await.ok();
    state
        .store
        .call(move |conn| Ok(accounts::delete_session(conn, &cookie)?))
        .await?;
    if let Some(session) = session {
        audit(
            &state,
            session.user.actor(),
            "logout",
            None,
            Some(peer.ip()),
            json!({ "reason": "user" }),
        )
        .await?;
    }
    Ok(response)
}

fn me_json(state: &AppState, session: &Session) -> serde_json::Value {
    let policy = state.accounts.policy();
    let user = &session.user;
    json!({
        "username": user.username,
        "display_name": user.display_name,
        "profession": user.profession,
        "is_admin": user.is_admin,
        "idle_timeout_secs": policy.idle_ms / 1000,
        "session_ends_at": (session.created_ms + policy.absolute_ms) / 1000,
        "totp_enrolled": user.totp_enrolled,
    })
}

async fn me(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    let session = session(&state, &headers, Need::Full).await?;
    Ok(json_response(StatusCode::OK, me_json(&state, &session)))
}

async fn ping(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    let session = session(&state, &headers, Need::Full).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "idle_timeout_secs": state.accounts.policy().idle_ms / 1000, "stage": session.stage }),
    ))
}

// ---------------------------------------------------------------------------------------
// Administration

#[derive(Deserialize)]
struct CreateUserBody {
    username: String,
    display_name: String,
    profession: Profession,
    #[serde(default)]
    is_admin: bool,
    password: String,
}

async fn create_user(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let admin = session(&state, &headers, Need::Admin).await?;
    let body: CreateUserBody = parse(&body)?;
    let new = NewUser {
        username: accounts::validate_username(&body.username)?,
        display_name: accounts::validate_display_name(&body.display_name)?,
        profession: body.profession,
        is_admin: body.is_admin,
        password: String::new(),
    };
    accounts::validate_password(&body.password)?;
    let password = body.password;
    let hash = tokio::task::spawn_blocking(move || accounts::hash_password(&password))
        .await
        .map_err(ApiError::internal)??;
    let now = now_ms();
    let user = state
        .store
        .call(move |conn| Ok(accounts::insert_user(conn, &new, &hash, now)))
        .await??;
    audit(
        &state,
        admin.user.actor(),
        "user_created",
        None,
        Some(peer.ip()),
        json!({ "username": user.username, "profession": user.profession, "is_admin": user.is_admin }),
    )
    .await?;
    Ok(json_response(StatusCode::CREATED, json!(user)))
}

async fn list_users(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    session(&state, &headers, Need::Admin).await?;
    let users = state
        .store
        .call(|conn| Ok(accounts::list_users(conn)))
        .await??;
    Ok(json_response(StatusCode::OK, json!({ "users": users })))
}

/// Runs an administrator's change to `username` and audits it as `action`.
async fn admin_change(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    username: String,
    action: &'static str,
    change: fn(&rusqlite::Connection, &str) -> Result<User, AccountError>,
) -> ApiResult {
    let admin = session(state, headers, Need::Admin).await?;
    let user = state
        .store
        .call(move |conn| Ok(change(conn, &username)))
        .await??;
    audit(
        state,
        admin.user.actor(),
        action,
        None,
        Some(peer.ip()),
        json!({ "username": user.username }),
    )
    .await?;
    Ok(json_response(StatusCode::OK, json!(user)))
}

async fn disable_user(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(username): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let admin = session(&state, &headers, Need::Admin).await?;
    if admin.user.username == username.trim().to_ascii_lowercase() {
        // Otherwise the last administrator can lock everyone out of administration.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cannot_disable_self",
            "you cannot disable your own account",
        ));
    }
    admin_change(
        &state,
        &headers,
        peer,
        username,
        "user_disabled",
        accounts::disable_user,
    )
    .await
}

async fn reset_totp(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(username): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    admin_change(
        &state,
        &headers,
        peer,
        username,
        "totp_reset",
        accounts::reset_totp,
    )
    .await
}

async fn disable_totp(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(username): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    admin_change(
        &state,
        &headers,
        peer,
        username,
        "totp_disabled",
        accounts::disable_totp,
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Conferences

#[derive(Deserialize)]
struct CreateConferenceBody {
    title: String,
    scheduled_at: String,
    #[serde(default)]
    invitations: Vec<InvitationBody>,
}

#[derive(Deserialize)]
struct InvitationBody {
    role: Role,
    display_name: String,
}

async fn create_conference(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let session = session(&state, &headers, Need::Full).await?;
    let body: CreateConferenceBody = parse(&body)?;
    let title = crate::links::validate_title(&body.title)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let scheduled_ms = conferences::parse_rfc3339(&body.scheduled_at).ok_or_else(|| {
        ApiError::bad_request(
            "scheduled_at must be an RFC 3339 time, e.g. 2025-06-01T14:00:00+09:00",
        )
    })?;
    if body.invitations.iter().any(|i| i.role == Role::Host) {
        return Err(ApiError::bad_request(
            "the host role is reserved for the conference's creator",
        ));
    }
    let max_guests = state.config.max_participants_per_room.saturating_sub(1);
    if body.invitations.len() > max_guests.min(conferences::MAX_INVITATIONS - 1) {
        return Err(ApiError::bad_request(format!(
            "at most {} invitations",
            max_guests.min(conferences::MAX_INVITATIONS - 1)
        )));
    }
    let mut specs = vec![InvitationSpec {
        role: Role::Host,
        display_name: session.user.display_name.clone(),
    }];
    specs.extend(body.invitations.into_iter().map(|i| InvitationSpec {
        role: i.role,
        display_name: i.display_name,
    }));
    let (not_before_ms, expires_ms) =
        InvitationWindow::from_config(&state.config).around(scheduled_ms);
    let warnings = conferences::title_warnings(&title);
    let now = now_ms();
    let base_url = state.base_url.clone();
    let (signer, user_id) = (state.keys.signer.clone(), session.user.id);
    let room = state
        .store
        .call(move |conn| {
            Ok(conferences::create_conference(
                conn,
                &signer,
                &base_url,
                &conferences::NewConference {
                    title: &title,
                    scheduled_ms,
                    not_before_ms,
                    expires_ms,
                    created_by: Some(user_id),
                    invitations: &specs,
                },
                now,
            ))
        })
        .await?
        .map_err(|e| match e {
            ConferenceError::Database(e) => ApiError::internal(e),
            other => ApiError::bad_request(other.to_string()),
        })?;
    let audit_state = state.clone();
    let (actor, ip, room_for_audit) = (session.user.actor(), peer.ip(), room.clone());
    tokio::task::spawn_blocking(move || {
        conferences::audit_created(
            &audit_state.audit,
            &actor,
            Some(ip),
            &room_for_audit,
            scheduled_ms,
        )
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::internal(format!("cannot write the audit log: {e:#}")))?;

    let host = &room.links[0];
    let invitations: Vec<_> = room.links[1..]
        .iter()
        .map(|l| json!({ "id": l.invitation_id, "role": l.role, "display_name": l.display_name, "url": l.url }))
        .collect();
    Ok(json_response(
        StatusCode::CREATED,
        json!({
            "conference_id": room.room_id,
            "title": room.title,
            "scheduled_at": conferences::format_rfc3339(scheduled_ms),
            "valid_from": conferences::format_rfc3339(not_before_ms),
            "expires_at": conferences::format_rfc3339(expires_ms),
            "host_link": host.url,
            "host_invitation_id": host.invitation_id,
            "invitations": invitations,
            "warnings": warnings,
        }),
    ))
}

async fn list_conferences(State(state): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    let session = session(&state, &headers, Need::Full).await?;
    let (id, now) = (session.user.id, now_ms());
    let list = state
        .store
        .call(move |conn| Ok(conferences::list_upcoming(conn, id, now)?))
        .await?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "conferences": list }),
    ))
}

async fn revoke_invitation(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let session = session(&state, &headers, Need::Full).await?;
    let (user_id, is_admin, now) = (session.user.id, session.user.is_admin, now_ms());
    let outcome = state
        .store
        .call(move |conn| {
            let Some(info) = conferences::find_invitation(conn, &id)? else {
                return Ok(Err(RevokeError::NotFound));
            };
            if !is_admin && info.created_by != Some(user_id) {
                // Not theirs: answer as if it did not exist, so ids cannot be probed.
                return Ok(Err(RevokeError::NotFound));
            }
            Ok(conferences::revoke_invitation(conn, &id, now))
        })
        .await?;
    let info = match outcome {
        Ok(info) => info,
        Err(RevokeError::NotFound) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such invitation",
            ))
        }
        Err(RevokeError::AlreadyRevoked) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_revoked",
                "the invitation was already revoked",
            ))
        }
        Err(RevokeError::Database(e)) => return Err(ApiError::internal(e)),
    };
    audit(
        &state,
        session.user.actor(),
        "invitation_revoked",
        Some(info.conference_id.clone()),
        Some(peer.ip()),
        json!({ "invitation_id": info.id, "role": info.role.as_str() }),
    )
    .await?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "id": info.id, "conference_id": info.conference_id, "revoked": true }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(cookie_value(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; wardlink_session=abc_-; b=2"),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("abc_-"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("wardlink_session="),
        );
        assert_eq!(cookie_value(&h), None);
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("x=1"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("wardlink_session=z"),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("z"));
    }

    #[test]
    fn cookie_attributes() {
        let c = session_cookie("v");
        assert_eq!(
            c.to_str().unwrap(),
            "wardlink_session=v; HttpOnly; Secure; SameSite=Strict; Path=/"
        );
        assert!(clear_cookie().to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn login_errors_map_to_statuses() {
        let cases: [(LoginError, u16, &str); 5] = [
            (
                LoginError::InvalidCredentials { account: None },
                401,
                "invalid_credentials",
            ),
            (LoginError::InvalidTotp, 401, "invalid_totp"),
            (
                LoginError::AccountLocked {
                    account: "a".into(),
                    retry_after_ms: 60_000,
                    just_locked: true,
                },
                423,
                "account_locked",
            ),
            (
                LoginError::RateLimited {
                    retry_after_ms: 1500,
                },
                429,
                "rate_limited",
            ),
            (
                LoginError::Disabled {
                    account: "a".into(),
                },
                403,
                "account_disabled",
            ),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.status.as_u16(), api.code), (status, code));
        }
        let api = ApiError::from(LoginError::RateLimited {
            retry_after_ms: 1500,
        });
        assert_eq!(api.retry_after_secs, Some(2));
    }
}
