//! The `wardlink` binary as an operator uses it: `room create`, `--help`, and the default
//! "serve plus demo links" mode with graceful shutdown on SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wardlink::keys::Keys;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wardlink-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn wardlink(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wardlink"));
    // Only the variables under test; inherited WARDLINK_* must not leak in.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WARDLINK_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("WARDLINK_DATA_DIR", data_dir)
        .env("WARDLINK_LOG", "warn");
    cmd
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn room_create_json_signs_with_the_data_dir_key() {
    let dir = temp_dir("json");
    let out = wardlink(&dir)
        .env("WARDLINK_PUBLIC_URL", "https://conf.example.jp/")
        .args([
            "room",
            "create",
            "--title",
            "退院前カンファレンス",
            "--json",
            "--valid-hours",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no signing key"));
    let room: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(room["title"], "退院前カンファレンス");
    let keys = Keys::load(&Keys::path(&dir)).unwrap();
    let links = room["links"].as_array().unwrap();
    let roles: Vec<_> = links.iter().map(|l| l["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["host", "care_manager", "surveyor"]);
    for link in links {
        let token = link["token"].as_str().unwrap();
        assert_eq!(
            link["url"],
            format!("https://conf.example.jp/join#t={token}")
        );
        let claims = keys.verifier.verify(token, now()).unwrap();
        assert_eq!(claims.room, room["room_id"].as_str().unwrap());
        assert!(claims.exp >= now() + 7200 - 5 && claims.exp <= now() + 7200 + 5);
    }

    // Text output names every link; a second run reuses the same key (and does not warn).
    let out = wardlink(&dir)
        .args(["room", "create", "-t", "カンファ"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let urls: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("https://"))
        .collect();
    assert_eq!(urls.len(), 3, "{text}");
    for url in urls {
        assert!(url.starts_with("https://127.0.0.1:8443/join#t="), "{url}");
        let token = url.split_once("#t=").unwrap().1;
        assert!(keys.verifier.verify(token, now()).is_ok());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_fails_with_a_message() {
    let dir = temp_dir("bad");
    for args in [
        &["room", "create", "--title", "   "][..],
        &["room", "create", "--title", "x", "--valid-hours", "0"],
        &[
            "--config",
            "/nonexistent/wardlink.toml",
            "room",
            "create",
            "--title",
            "x",
        ],
    ] {
        let out = wardlink(&dir).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
    let out = wardlink(&dir)
        .env("WARDLINK_MEDIA_PORT", "seventy")
        .args(["room", "create", "--title", "x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARDLINK_MEDIA_PORT"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_documents_every_flag() {
    let dir = temp_dir("help");
    let top = wardlink(&dir).arg("--help").output().unwrap();
    let top = String::from_utf8(top.stdout).unwrap();
    for needle in [
        "--config",
        "WARDLINK_CONFIG",
        "serve",
        "room",
        "demo conference",
    ] {
        assert!(top.contains(needle), "--help lacks {needle}:\n{top}");
    }
    let create = wardlink(&dir)
        .args(["room", "create", "--help"])
        .output()
        .unwrap();
    let create = String::from_utf8(create.stdout).unwrap();
    for needle in ["--title", "--json", "--valid-hours"] {
        assert!(
            create.contains(needle),
            "room create --help lacks {needle}:\n{create}"
        );
    }
    let serve = wardlink(&dir).args(["serve", "--help"]).output().unwrap();
    assert!(String::from_utf8(serve.stdout).unwrap().contains("--demo"));
}

/// `cargo run --release` runs the binary with no arguments: serve and print demo links.
#[cfg(unix)]
#[test]
fn no_subcommand_serves_prints_demo_links_and_stops_on_sigterm() {
    let dir = temp_dir("serve");
    let mut child = wardlink(&dir)
        .env("WARDLINK_LISTEN", "127.0.0.1:0")
        .env("WARDLINK_MEDIA_PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    let mut urls = Vec::new();
    while urls.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if line.trim().starts_with("https://") {
                    urls.push(line.trim().to_owned());
                }
                lines.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "demo links not printed; stdout so far:\n{}",
                    lines.join("\n")
                );
            }
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("デモ会議 (demo)")),
        "{lines:?}"
    );
    // The links name the real port, and the server is accepting connections on it.
    let authority = urls[0]
        .strip_prefix("https://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(a, _)| a.to_owned())
        .unwrap();
    assert!(!authority.ends_with(":0"), "{authority}");
    std::net::TcpStream::connect(&authority).expect("server not listening at the printed address");
    let keys = Keys::load(&Keys::path(&dir)).unwrap();
    for url in &urls {
        let token = url.split_once("#t=").unwrap().1;
        assert!(keys.verifier.verify(token, now()).is_ok());
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wardlink did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status after SIGTERM: {exit}");
    std::fs::remove_dir_all(&dir).unwrap();
}
