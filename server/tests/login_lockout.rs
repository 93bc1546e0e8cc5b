//! Staff login limits the existing `staff_api.rs` tests do not reach, over real HTTPS: TOTP
//! guessing locks the account like password guessing, failures spread over many names block
//! the address, and a session ends after its absolute lifetime however active it is.

mod common;

use common::*;

use reqwest::StatusCode;
use serde_json::{json, Value};
use wardlink::accounts::{self};
use wardlink::config::Config;
use wardlink::server::RunningServer;

/// The shared server with a generous login rate, so the lockout rules (not the per-minute
/// attempt limit) are what these tests meet.
async fn start_server(dir: &TempDir, tweak: impl FnOnce(&mut Config)) -> RunningServer {
    common::start_server(dir, |c| {
        c.limits.logins_per_minute_per_ip = 1000;
        tweak(c);
    })
    .await
}

fn audit_rows(server: &RunningServer) -> Vec<(String, String, Value)> {
    server
        .state()
        .audit
        .entries(None, None)
        .unwrap()
        .into_iter()
        .map(|e| {
            let detail = serde_json::from_str(&e.detail).unwrap();
            (e.actor, e.action, detail)
        })
        .collect()
}

/// Enrols TOTP for `username` through the API and signs out again; returns the secret.
async fn enrol(browser: &Browser, username: &str) -> String {
    assert_eq!(
        browser.login(username, PASSWORD).await.body["stage"],
        "enroll"
    );
    let r = browser.post("/api/totp/enroll", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    let code = wardlink::totp::code_at_step(&secret, current_step()).unwrap();
    let r = browser
        .post("/api/totp/confirm", json!({ "code": code }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        browser.post("/api/logout", json!({})).await.status,
        StatusCode::OK
    );
    secret
}

#[tokio::test]
async fn guessing_totp_codes_locks_the_account() {
    let dir = TempDir::new("totp");
    let server = start_server(&dir, |_| {}).await;
    add_user(&server, "yamada", false);
    let browser = Browser::new(&server, &dir);
    let secret = enrol(&browser, "yamada").await;

    // The password is right; the second factor is guessed.
    assert_eq!(
        browser.login("yamada", PASSWORD).await.body["stage"],
        "totp"
    );
    for attempt in 1..=4 {
        let r = browser
            .post("/api/login/totp", json!({ "code": wrong_code(&secret) }))
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "invalid_totp"),
            "attempt {attempt}: {:?}",
            r.body
        );
    }
    let r = browser
        .post("/api/login/totp", json!({ "code": wrong_code(&secret) }))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::LOCKED, "account_locked"),
        "{:?}",
        r.body
    );
    let message = r.body["message"].as_str().unwrap();
    assert!(
        message.contains("locked") && message.contains("15 minutes"),
        "{message}"
    );
    assert!(r.headers.contains_key("retry-after"));

    // Locked: the half-open session is gone, so not even the right code can be tried on it,
    // a fresh password login is refused, and nothing opens a full session.
    let sessions: i64 = server
        .state()
        .store
        .lock()
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sessions, 0, "a locked account kept a session");
    let code = wardlink::totp::code_at_step(&secret, current_step()).unwrap();
    let r = browser
        .post("/api/login/totp", json!({ "code": code }))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "not_authenticated")
    );
    let r = browser.login("yamada", PASSWORD).await;
    assert_eq!((r.status, r.code()), (StatusCode::LOCKED, "account_locked"));
    assert!(r.headers.get("set-cookie").is_none());
    assert_ne!(browser.get("/api/me").await.status, StatusCode::OK);

    let rows = audit_rows(&server);
    let locked: Vec<_> = rows
        .iter()
        .filter(|(_, action, _)| action == "account_locked")
        .collect();
    assert_eq!(locked.len(), 1, "{rows:?}");
    assert_eq!(locked[0].0, "user:yamada");
    assert_eq!(locked[0].2["scope"], "account");
    let totp_failures = rows
        .iter()
        .filter(|(_, a, d)| a == "login_failed" && d["reason"] == "invalid_totp")
        .count();
    assert_eq!(totp_failures, 4, "{rows:?}");
    assert!(
        !format!("{rows:?}").contains(&secret),
        "the TOTP secret reached the audit log"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn failures_across_many_names_block_the_address() {
    let dir = TempDir::new("address");
    let server = start_server(&dir, |c| {
        c.security.login_max_failures_per_ip = 4;
        c.security.login_max_failures_per_account = 100;
    })
    .await;
    add_user(&server, "kato", false);
    let browser = Browser::new(&server, &dir);

    // A password spray: one try per name, real or not.
    for name in ["kato", "suzuki", "admin"] {
        let r = browser.login(name, "Winter2025!!!").await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            "{name}"
        );
    }
    let r = browser.login("tanaka", "Winter2025!!!").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "ip_blocked"),
        "{:?}",
        r.body
    );
    assert!(r.headers.contains_key("retry-after"));
    // Now even the right password of a real account is refused from this address.
    let r = browser.login("kato", PASSWORD).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "ip_blocked")
    );
    assert!(r.headers.get("set-cookie").is_none());

    let rows = audit_rows(&server);
    let blocked: Vec<_> = rows
        .iter()
        .filter(|(_, action, _)| action == "account_locked")
        .collect();
    assert_eq!(blocked.len(), 1, "{rows:?}");
    assert_eq!(blocked[0].2["scope"], "address");
    // The real account itself is not locked (the block is on the address).
    let locked_until: i64 = server
        .state()
        .store
        .lock()
        .query_row(
            "SELECT locked_until_ms FROM users WHERE username = 'kato'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(locked_until, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn sessions_end_after_their_absolute_lifetime() {
    let dir = TempDir::new("absolute");
    let server = start_server(&dir, |_| {}).await;
    add_user(&server, "ito", false);
    accounts::disable_totp(&server.state().store.lock(), "ito").unwrap();
    let browser = Browser::new(&server, &dir);
    assert_eq!(browser.login("ito", PASSWORD).await.body["stage"], "full");
    assert_eq!(browser.get("/api/me").await.status, StatusCode::OK);

    // Active a moment ago, but signed in 12 hours ago (the default absolute limit).
    server
        .state()
        .store
        .lock()
        .execute(
            "UPDATE sessions SET created_ms = created_ms - 12 * 3600 * 1000",
            [],
        )
        .unwrap();
    let r = browser.get("/api/me").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "session_expired"),
        "{:?}",
        r.body
    );
    assert_eq!(
        browser.get("/api/me").await.status,
        StatusCode::UNAUTHORIZED,
        "the expired session came back"
    );
    assert!(
        audit_rows(&server)
            .iter()
            .any(|(actor, action, _)| actor == "user:ito" && action == "logout"),
        "the expiry is not audited"
    );
    server.shutdown().await;
}
