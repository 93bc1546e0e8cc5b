//! Shared pieces of the staff-API integration tests: a temporary data directory, an
//! in-process server, test users, a browser-like HTTPS client, and TOTP helpers.
//! (Each test binary uses a subset, hence the `dead_code` allowance.)
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;
use serde_json::{json, Value};
use wardlink::accounts::{self, NewUser, Profession};
use wardlink::config::Config;
use wardlink::server::{start, unix_now, RunningServer};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "wardlink-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn start_server(dir: &TempDir, tweak: impl FnOnce(&mut Config)) -> RunningServer {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        media_port: 0,
        media_bind: "127.0.0.1".parse().unwrap(),
        data_dir: dir.0.clone(),
        ..Config::default()
    };
    tweak(&mut config);
    start(config).await.expect("server starts")
}

pub fn add_user(server: &RunningServer, username: &str, is_admin: bool) -> accounts::User {
    accounts::create_user(
        &server.state().store.lock(),
        &NewUser {
            username: username.into(),
            display_name: format!("{username} 表示名"),
            profession: if is_admin {
                Profession::Admin
            } else {
                Profession::Nurse
            },
            is_admin,
            password: PASSWORD.into(),
        },
        wardlink::store::now_ms(),
    )
    .unwrap()
}

/// A browser-like client: its own cookie jar, the server's certificate pinned, and the
/// `Origin` a page from the server would send.
pub struct Browser {
    pub client: reqwest::Client,
    pub base: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn set_cookie(&self) -> Option<&str> {
        self.headers.get("set-cookie").and_then(|v| v.to_str().ok())
    }
}

impl Browser {
    pub fn new(server: &RunningServer, dir: &TempDir) -> Browser {
        Browser::with_origin(server, dir, Some(&server.base_url))
    }

    pub fn with_origin(server: &RunningServer, dir: &TempDir, origin: Option<&str>) -> Browser {
        Browser::build(server, dir, origin, true)
    }

    /// A client that keeps no cookies (to replay a specific one by hand).
    pub fn without_cookies(server: &RunningServer, dir: &TempDir) -> Browser {
        Browser::build(server, dir, Some(&server.base_url), false)
    }

    pub fn build(
        server: &RunningServer,
        dir: &TempDir,
        origin: Option<&str>,
        cookies: bool,
    ) -> Browser {
        let pem = std::fs::read(dir.0.join("tls").join("cert.pem")).unwrap();
        let mut headers = HeaderMap::new();
        if let Some(origin) = origin {
            headers.insert("origin", HeaderValue::from_str(origin).unwrap());
        }
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .cookie_store(cookies)
            .default_headers(headers)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Browser {
            client,
            base: server.base_url.clone(),
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request completes");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {status} {text:?}"));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.client.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn login(&self, username: &str, password: &str) -> Reply {
        self.post(
            "/api/login",
            json!({ "username": username, "password": password }),
        )
        .await
    }
}

/// The current TOTP time step.
pub fn current_step() -> i64 {
    wardlink::totp::step_at(unix_now())
}

/// A six-digit code valid at no step near now.
pub fn wrong_code(secret: &str) -> String {
    let step = current_step();
    let valid: Vec<String> = (step - 3..=step + 3)
        .map(|s| wardlink::totp::code_at_step(secret, s).unwrap())
        .collect();
    (0..)
        .map(|n| format!("{:06}", 123_457 + n * 7919))
        .find(|c| !valid.contains(c))
        .unwrap()
}
