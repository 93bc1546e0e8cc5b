//! The staff API over real HTTPS against an in-process server: two-factor login, lockout,
//! session expiry, CSRF guard, administration and conference scheduling.

mod common;

use common::*;

use reqwest::StatusCode;
use serde_json::json;
use wardlink::accounts::{self};
use wardlink::conferences::{check_invitation, InvitationError};
use wardlink::server::{unix_now, RunningServer};
use wardlink_signaling::ErrorCode;

fn totp_secret(server: &RunningServer, username: &str, column: &str) -> String {
    server
        .state()
        .store
        .lock()
        .query_row(
            &format!("SELECT {column} FROM users WHERE username = ?1"),
            [username],
            |r| r.get(0),
        )
        .unwrap()
}

fn audit_rows(server: &RunningServer) -> Vec<(String, String, String)> {
    let conn = server.state().store.lock();
    let mut stmt = conn
        .prepare("SELECT actor, action, detail FROM audit_log ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

#[tokio::test]
async fn two_factor_login_sessions_and_conferences() {
    let dir = TempDir::new("flow");
    let server = start_server(&dir, |c| {
        c.limits.logins_per_minute_per_ip = 1000;
    })
    .await;
    add_user(&server, "sato", false);
    let browser = Browser::new(&server, &dir);

    // Cross-site guards: POSTs need an Origin naming this server and a JSON content type.
    let no_origin = Browser::with_origin(&server, &dir, None);
    let r = no_origin.login("sato", PASSWORD).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "bad_origin"));
    let evil = Browser::with_origin(&server, &dir, Some("https://evil.example"));
    let r = evil.login("sato", PASSWORD).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "bad_origin"));
    let r = browser
        .send(
            browser
                .client
                .post(format!("{}/api/login", browser.base))
                .header("content-type", "text/plain")
                .body(format!(r#"{{"username":"sato","password":"{PASSWORD}"}}"#)),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let r = browser.get("/api/me").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "not_authenticated")
    );
    assert_eq!(
        r.headers.get("cache-control").unwrap(),
        "no-store",
        "API answers are never cached"
    );
    let r = browser.get("/api/nope").await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));

    // First login: the password opens a half session that must enrol TOTP.
    let r = browser.login("sato", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["stage"], "enroll");
    let cookie = r.set_cookie().unwrap().to_owned();
    assert!(cookie.starts_with("wardlink_session="), "{cookie}");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    let half_cookie = cookie.split(';').next().unwrap().to_owned();
    // Only the SHA-256 of the cookie is stored.
    let value = half_cookie.trim_start_matches("wardlink_session=");
    let stored: String = server
        .state()
        .store
        .lock()
        .query_row("SELECT id_hash FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, accounts::session_hash(value));

    // A half session can do nothing but the second factor.
    let r = browser.get("/api/me").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "totp_required")
    );
    let r = browser
        .post(
            "/api/conferences",
            json!({ "title": "t", "scheduled_at": "2030-01-01T10:00:00+09:00", "invitations": [] }),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "totp_required")
    );
    let r = browser
        .post("/api/login/totp", json!({ "code": "123456" }))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "enrollment_required")
    );

    // Enrolment.
    let r = browser.post("/api/totp/enroll", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let secret = totp_secret(&server, "sato", "totp_pending");
    assert_eq!(
        r.body["otpauth_uri"],
        format!(
            "otpauth://totp/wardlink:sato?secret={secret}&issuer=wardlink&algorithm=SHA1&digits=6&period=30"
        )
    );
    assert!(r.body["qr_svg"].as_str().unwrap().contains("<svg"));
    let r = browser
        .post("/api/totp/confirm", json!({ "code": "000000x" }))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "invalid_totp")
    );
    let enrol_step = current_step();
    let enrol_code = wardlink::totp::code_at_step(&secret, enrol_step).unwrap();
    let r = browser
        .post("/api/totp/confirm", json!({ "code": enrol_code }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["stage"], "full");
    // The session id changes when it becomes a full session.
    let full_cookie = r
        .set_cookie()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(full_cookie, half_cookie);
    assert_eq!(totp_secret(&server, "sato", "totp_secret"), secret);

    let r = browser.get("/api/me").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["username"], "sato");
    assert_eq!(r.body["display_name"], "sato 表示名");
    assert_eq!(r.body["profession"], "nurse");
    assert_eq!(r.body["is_admin"], false);
    assert_eq!(r.body["idle_timeout_secs"], 15 * 60);
    let r = browser.post("/api/session/ping", json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    // The pre-TOTP cookie is worthless now.
    let bare = Browser::without_cookies(&server, &dir);
    let stale = bare
        .send(
            bare.client
                .get(format!("{}/api/me", bare.base))
                .header("cookie", &half_cookie),
        )
        .await;
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED);

    // Logout ends the session.
    let r = browser.post("/api/logout", json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.set_cookie().unwrap().contains("Max-Age=0"));
    assert_eq!(
        browser.get("/api/me").await.status,
        StatusCode::UNAUTHORIZED
    );

    // Second login: password, then a TOTP code.
    let r = browser.login("SATO", PASSWORD).await;
    assert_eq!(r.body["stage"], "totp", "{:?}", r.body);
    let r = browser
        .post("/api/login/totp", json!({ "code": wrong_code(&secret) }))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "invalid_totp")
    );
    // The code used at enrolment cannot be replayed.
    let r = browser
        .post("/api/login/totp", json!({ "code": enrol_code }))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "invalid_totp")
    );
    // Enrolling a new authenticator needs the enrolled one first.
    let r = browser.post("/api/totp/enroll", json!({})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "totp_required")
    );
    let code = wardlink::totp::code_at_step(&secret, current_step() + 1).unwrap();
    let r = browser
        .post("/api/login/totp", json!({ "code": code }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["stage"], "full");

    // Scheduling a conference.
    let r = browser
        .post(
            "/api/conferences",
            json!({
                "title": "田中様 退院前カンファレンス",
                "scheduled_at": "2030-01-01T10:00:00+09:00",
                "invitations": [{ "role": "host", "display_name": "x" }],
            }),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_field")
    );
    let scheduled = rfc3339_in_minutes(30);
    let r = browser
        .post(
            "/api/conferences",
            json!({
                "title": "田中様 退院前カンファレンス",
                "scheduled_at": scheduled,
                "invitations": [
                    { "role": "care_manager", "display_name": "ケアマネジャー 山本" },
                    { "role": "family", "display_name": "ご家族" },
                ],
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["warnings"], json!(["title_may_contain_name"]));
    let conference_id = r.body["conference_id"].as_str().unwrap().to_owned();
    let host_link = r.body["host_link"].as_str().unwrap();
    let invitations = r.body["invitations"].as_array().unwrap().clone();
    assert_eq!(invitations.len(), 2);
    let verifier = &server.state().keys.verifier;
    let token_of = |url: &str| url.split_once("#t=").unwrap().1.to_owned();
    let host = verifier.verify(&token_of(host_link), unix_now()).unwrap();
    assert_eq!(host.role, wardlink_signaling::Role::Host);
    assert_eq!(host.name, "sato 表示名");
    assert_eq!(host.room, conference_id);
    let claims: Vec<_> = invitations
        .iter()
        .map(|i| {
            let c = verifier
                .verify(&token_of(i["url"].as_str().unwrap()), unix_now())
                .unwrap();
            assert_eq!(c.jti, i["id"].as_str().unwrap());
            assert_eq!(c.role.as_str(), i["role"].as_str().unwrap());
            c
        })
        .collect();
    assert_eq!(claims[1].name, "ご家族");
    // Links work from an hour before the scheduled time: now is inside the window.
    let now_ms = wardlink::store::now_ms();
    for c in &claims {
        let check = check_invitation(&server.state().store.lock(), c, Some("device-1"), now_ms);
        assert!(check.is_ok(), "{check:?}");
    }

    let r = browser.get("/api/conferences").await;
    assert_eq!(r.status, StatusCode::OK);
    let listed = &r.body["conferences"][0];
    assert_eq!(listed["conference_id"], conference_id);
    assert_eq!(listed["invitations"].as_array().unwrap().len(), 3);
    assert!(
        !r.body.to_string().contains(&token_of(host_link)),
        "tokens are never listed"
    );

    // Revoking one invitation.
    let family_id = claims[1].jti.clone();
    let r = browser
        .post(&format!("/api/invitations/{family_id}/revoke"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = browser
        .post(&format!("/api/invitations/{family_id}/revoke"), json!({}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "already_revoked")
    );
    let r = browser
        .post("/api/invitations/ffffffffffffffff/revoke", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    {
        let conn = server.state().store.lock();
        let err = check_invitation(&conn, &claims[1], Some("device-1"), now_ms).unwrap_err();
        assert!(matches!(err, InvitationError::Revoked));
        assert_eq!(err.code(), ErrorCode::InvitationRevoked);
        assert!(check_invitation(&conn, &claims[0], Some("device-1"), now_ms).is_ok());
    }

    // Not an administrator.
    let r = browser.get("/api/admin/users").await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"));

    // Idle expiry: the session was last used 16 minutes ago.
    server
        .state()
        .store
        .lock()
        .execute(
            "UPDATE sessions SET last_seen_ms = last_seen_ms - 16 * 60 * 1000",
            [],
        )
        .unwrap();
    let r = browser.get("/api/me").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "session_expired")
    );
    let r = browser.get("/api/me").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "not_authenticated")
    );

    // The audit trail names every step and never a secret.
    let rows = audit_rows(&server);
    assert!(
        rows.iter()
            .any(|(actor, action, detail)| actor == "user:sato"
                && action == "logout"
                && detail.contains("expired")),
        "the idle timeout is audited: {rows:?}"
    );
    let actions: Vec<&str> = rows.iter().map(|(_, a, _)| a.as_str()).collect();
    for expected in [
        "login_succeeded",
        "login_failed",
        "totp_enrolled",
        "logout",
        "conference_created",
        "invitation_issued",
        "invitation_revoked",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "invitation_issued")
            .count(),
        3
    );
    let everything = format!("{rows:?}");
    for secret_text in [PASSWORD, secret.as_str(), &token_of(host_link), value] {
        assert!(
            !everything.contains(secret_text),
            "audit log leaks {secret_text}"
        );
    }
    assert!(
        !everything.contains("田中"),
        "titles (patient names) stay out of the audit log"
    );
    server.shutdown().await;
}

/// `now + minutes` as RFC 3339 (UTC).
fn rfc3339_in_minutes(minutes: i64) -> String {
    wardlink::conferences::format_rfc3339(wardlink::store::now_ms() + minutes * 60_000)
}

#[tokio::test]
async fn brute_force_locks_the_account_and_rate_limits_the_address() {
    let dir = TempDir::new("lockout");
    let server = start_server(&dir, |c| {
        c.limits.logins_per_minute_per_ip = 12;
    })
    .await;
    add_user(&server, "suzuki", false);
    let browser = Browser::new(&server, &dir);

    let unknown = browser.login("nobody", "wrong password!").await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::UNAUTHORIZED, "invalid_credentials")
    );
    for attempt in 1..=4 {
        let r = browser.login("suzuki", "wrong password!").await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            "attempt {attempt}"
        );
        // Same answer as for an unknown user.
        assert_eq!(r.body, unknown.body);
    }
    // The fifth consecutive failure locks the account, and says so.
    let r = browser.login("suzuki", "wrong password!").await;
    assert_eq!((r.status, r.code()), (StatusCode::LOCKED, "account_locked"));
    let message = r.body["message"].as_str().unwrap();
    assert!(
        message.contains("locked") && message.contains("15 minutes"),
        "{message}"
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((14 * 60..=15 * 60).contains(&retry), "{retry}");
    let r = browser.login("suzuki", "wrong password!").await;
    assert_eq!((r.status, r.code()), (StatusCode::LOCKED, "account_locked"));
    // Even the right password is refused while locked.
    let r = browser.login("suzuki", PASSWORD).await;
    assert_eq!((r.status, r.code()), (StatusCode::LOCKED, "account_locked"));
    assert!(r.set_cookie().is_none());

    // When the lockout ends (moved into the past here), the right password works.
    server
        .state()
        .store
        .lock()
        .execute(
            "UPDATE users SET locked_until_ms = ?1 WHERE username = 'suzuki'",
            [wardlink::store::now_ms() - 1],
        )
        .unwrap();
    let r = browser.login("suzuki", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["stage"], "enroll");

    // 9 attempts so far; the address may make 12 a minute.
    let mut limited = None;
    for _ in 0..5 {
        let r = browser.login("suzuki", PASSWORD).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the attempt rate is limited");
    assert_eq!(r.code(), "rate_limited");
    assert!(r.headers.contains_key("retry-after"));

    let rows = audit_rows(&server);
    let locked: Vec<_> = rows
        .iter()
        .filter(|(_, a, _)| a == "account_locked")
        .collect();
    assert_eq!(locked.len(), 1, "{rows:?}");
    assert_eq!(locked[0].0, "user:suzuki");
    let failed = rows.iter().filter(|(_, a, _)| a == "login_failed").count();
    assert_eq!(failed, 8, "{rows:?}");
    assert!(rows
        .iter()
        .any(|(actor, a, _)| actor == "anonymous" && a == "login_failed"));
    assert!(
        !format!("{rows:?}").contains("nobody"),
        "unknown names are not recorded"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn administrators_manage_accounts() {
    let dir = TempDir::new("admin");
    let server = start_server(&dir, |c| {
        c.limits.logins_per_minute_per_ip = 1000;
    })
    .await;
    add_user(&server, "admin1", true);
    // TOTP turned off for this account, so the password alone gives a full session.
    accounts::disable_totp(&server.state().store.lock(), "admin1").unwrap();
    let admin = Browser::new(&server, &dir);
    let r = admin.login("admin1", PASSWORD).await;
    assert_eq!(r.body["stage"], "full", "{:?}", r.body);
    let r = admin.get("/api/me").await;
    assert_eq!(r.body["is_admin"], true);

    let r = admin
        .post(
            "/api/admin/users",
            json!({ "username": "Tanaka", "display_name": "田中 一郎", "profession": "doctor", "password": "short" }),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_field")
    );
    let r = admin
        .post(
            "/api/admin/users",
            json!({ "username": "Tanaka", "display_name": "田中 一郎", "profession": "doctor", "password": PASSWORD }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["username"], "tanaka");
    assert_eq!(r.body["profession"], "doctor");
    assert!(r.body.get("password_hash").is_none());
    let r = admin
        .post(
            "/api/admin/users",
            json!({ "username": "tanaka", "display_name": "x", "profession": "msw", "password": PASSWORD }),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "username_taken")
    );
    let r = admin.get("/api/admin/users").await;
    let names: Vec<_> = r.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["admin1", "tanaka"]);

    // The new user can sign in (and must enrol); a TOTP reset ends their session.
    let tanaka = Browser::new(&server, &dir);
    assert_eq!(
        tanaka.login("tanaka", PASSWORD).await.body["stage"],
        "enroll"
    );
    tanaka.post("/api/totp/enroll", json!({})).await;
    let secret = totp_secret(&server, "tanaka", "totp_pending");
    let code = wardlink::totp::code_at_step(&secret, current_step()).unwrap();
    assert_eq!(
        tanaka
            .post("/api/totp/confirm", json!({ "code": code }))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(tanaka.get("/api/me").await.status, StatusCode::OK);
    let r = admin
        .post("/api/admin/users/tanaka/totp-reset", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["totp_enrolled"], false);
    assert_eq!(tanaka.get("/api/me").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        tanaka.login("tanaka", PASSWORD).await.body["stage"],
        "enroll"
    );

    // Disabling.
    let r = admin
        .post("/api/admin/users/admin1/disable", json!({}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "cannot_disable_self")
    );
    let r = admin
        .post("/api/admin/users/tanaka/disable", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["disabled"], true);
    let r = tanaka.login("tanaka", PASSWORD).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "account_disabled")
    );
    let r = admin
        .post("/api/admin/users/nobody/disable", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let rows = audit_rows(&server);
    for (action, actor) in [
        ("user_created", "user:admin1"),
        ("totp_reset", "user:admin1"),
        ("user_disabled", "user:admin1"),
    ] {
        assert!(
            rows.iter()
                .any(|(a, x, d)| x == action && a == actor && d.contains("tanaka")),
            "{action} missing: {rows:?}"
        );
    }
    server.shutdown().await;
}
