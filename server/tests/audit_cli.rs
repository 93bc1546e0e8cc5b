//! The audit trail as an operator checks it: real conference activity over WSS against an
//! in-process server, then the real `wardlink` binary's `audit verify` and `audit export` on
//! the SQLite file it left, before and after someone edits that file behind the server's back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use hmac::{Hmac, Mac as _};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio_tungstenite::tungstenite::Message;
use wardlink::config::Config;
use wardlink_signaling::Role;

const WAIT: Duration = Duration::from_secs(10);

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "wardlink-audit-cli-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("WARDLINK_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ------------------------------------------------------------------ a minimal WSS client

/// Any certificate: this test is about the audit trail, not certificate checks.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr) -> Ws {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/ws"), tls)
        .await
        .unwrap();
    ws
}

async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string())).await.unwrap();
}

/// The next server message of type `kind`, skipping others.
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let Some(frame) = ws.next().await else {
                panic!("closed while waiting for {kind}");
            };
            let frame = frame.unwrap();
            let Ok(text) = frame.to_text() else { continue };
            let Ok(value) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if value["type"] == "error" {
                panic!("error while waiting for {kind}: {value}");
            }
            if value["type"] == kind {
                return value;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} within {WAIT:?}"))
}

async fn join(addr: SocketAddr, token: &str, device: &str) -> Ws {
    let mut ws = connect(addr).await;
    send(
        &mut ws,
        json!({ "type": "join", "protocol": 1, "token": token, "device": device }),
    )
    .await;
    ws
}

// ------------------------------------------------------------------ the binary and the file

fn wardlink(config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wardlink"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WARDLINK_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--config").arg(config).args(args).output().unwrap()
}

fn write_config(data_dir: &Path) -> PathBuf {
    let path = data_dir.with_extension("toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\nlog_level = \"warn\"\n",
            data_dir.display().to_string()
        ),
    )
    .unwrap();
    path
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn open_db(data_dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(data_dir.join(wardlink::store::DB_FILE)).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

/// A consistent copy of the data directory's database, audit key and anchor.
fn copy_data_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in [wardlink::audit::KEY_FILE, wardlink::audit::ANCHOR_FILE] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
    open_db(from)
        .execute(
            "VACUUM INTO ?1",
            [to.join(wardlink::store::DB_FILE).display().to_string()],
        )
        .unwrap();
}

/// A fresh copy of `original` under `root/name`, with its config file.
fn fresh_copy(original: &Path, root: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = root.join(name);
    copy_data_dir(original, &dir);
    let config = write_config(&dir);
    (dir, config)
}

/// The entry hash as documented in `audit.rs`: SHA-256 over length-prefixed fields.
#[allow(clippy::too_many_arguments)]
fn entry_hash(
    seq: i64,
    ts_ms: i64,
    actor: &str,
    action: &str,
    conference: Option<&str>,
    peer: Option<&str>,
    detail: &str,
    prev_hash: &str,
) -> String {
    fn field(h: &mut Sha256, bytes: Option<&[u8]>) {
        match bytes {
            Some(b) => {
                h.update((b.len() as u64).to_be_bytes());
                h.update(b);
            }
            None => h.update(u64::MAX.to_be_bytes()),
        }
    }
    let mut h = Sha256::new();
    field(&mut h, Some(b"wardlink-audit-entry-v1"));
    field(&mut h, Some(&seq.to_be_bytes()));
    field(&mut h, Some(&ts_ms.to_be_bytes()));
    field(&mut h, Some(actor.as_bytes()));
    field(&mut h, Some(action.as_bytes()));
    field(&mut h, conference.map(str::as_bytes));
    field(&mut h, peer.map(str::as_bytes));
    field(&mut h, Some(detail.as_bytes()));
    field(&mut h, Some(prev_hash.as_bytes()));
    hex::encode(h.finalize())
}

#[derive(Debug, Clone)]
struct Row {
    seq: i64,
    ts_ms: i64,
    actor: String,
    action: String,
    conference: Option<String>,
    peer: Option<String>,
    detail: String,
    prev_hash: String,
    hash: String,
}

fn rows(conn: &rusqlite::Connection) -> Vec<Row> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, ts_ms, actor, action, conference, peer, detail, prev_hash, hash \
             FROM audit_log ORDER BY seq",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(Row {
            seq: r.get(0)?,
            ts_ms: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            conference: r.get(4)?,
            peer: r.get(5)?,
            detail: r.get(6)?,
            prev_hash: r.get(7)?,
            hash: r.get(8)?,
        })
    })
    .unwrap()
    .collect::<Result<Vec<_>, _>>()
    .unwrap()
}

fn hash_of(row: &Row) -> String {
    entry_hash(
        row.seq,
        row.ts_ms,
        &row.actor,
        &row.action,
        row.conference.as_deref(),
        row.peer.as_deref(),
        &row.detail,
        &row.prev_hash,
    )
}

/// RFC 4180 records (quoted fields with `""` escapes, CRLF line ends).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

/// Whether `needles` occur in `haystack` in this order (not necessarily adjacent).
fn in_order(haystack: &[String], needles: &[&str]) -> bool {
    let mut it = haystack.iter();
    needles.iter().all(|n| it.any(|h| h == n))
}

fn assert_tampered(out: &Output, seq: i64, reason: &str, what: &str) {
    assert_eq!(out.status.code(), Some(1), "{what}: {}", describe(out));
    let text = stdout(out);
    assert!(
        text.contains(&format!("audit log TAMPERED: first bad entry #{seq}:")),
        "{what}: should name entry #{seq}: {}",
        describe(out)
    );
    assert!(
        text.contains(reason),
        "{what}: should say {reason:?}: {}",
        describe(out)
    );
}

// ------------------------------------------------------------------ the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_cli_verifies_exports_and_detects_tampering() {
    let root = TempDir::new("main");
    let data = root.0.join("data");
    let config_file = write_config(&data);
    let server = wardlink::server::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        media_port: 0,
        media_bind: "127.0.0.1".parse().unwrap(),
        data_dir: data.clone(),
        ..Config::default()
    })
    .await
    .unwrap();
    let addr = server.https_addr;
    let room = server.create_room("監査テスト").unwrap();
    let token = |role: Role| {
        room.links
            .iter()
            .find(|l| l.role == role)
            .unwrap()
            .token
            .clone()
    };

    // The nurse opens the conference; the care manager is admitted, the surveyor denied.
    let mut host = join(addr, &token(Role::Host), "host-device-000000001").await;
    let host_id = next_of(&mut host, "joined").await["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut cm = join(addr, &token(Role::CareManager), "cm-device-00000000001").await;
    let cm_id = next_of(&mut cm, "waiting").await["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sv = join(addr, &token(Role::Surveyor), "sv-device-00000000001").await;
    let sv_id = next_of(&mut sv, "waiting").await["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    loop {
        let lobby = next_of(&mut host, "lobby").await;
        if lobby["waiting"].as_array().unwrap().len() == 2 {
            break;
        }
    }
    send(
        &mut host,
        json!({ "type": "admit", "participant_id": cm_id }),
    )
    .await;
    next_of(&mut cm, "joined").await;
    send(
        &mut host,
        json!({ "type": "deny", "participant_id": sv_id }),
    )
    .await;
    assert_eq!(next_of(&mut sv, "bye").await["reason"], "denied");
    send(&mut cm, json!({ "type": "leave" })).await;
    assert_eq!(next_of(&mut cm, "bye").await["reason"], "left");
    send(&mut host, json!({ "type": "leave" })).await;
    assert_eq!(next_of(&mut host, "bye").await["reason"], "left");
    drop((host, cm, sv));
    server.shutdown().await;

    // ---- verify: the untouched log is OK, and says how many entries it checked.
    let conn = open_db(&data);
    let original = rows(&conn);
    drop(conn);
    let out = wardlink(&config_file, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("audit log OK: {} entries", original.len())
    );
    // This test's idea of the entry hash is the server's (so a forged row below really has
    // a correct hash, and only the MAC can give it away).
    for row in &original {
        assert_eq!(hash_of(row), row.hash, "entry #{}", row.seq);
    }

    // ---- export: both formats list the conference's steps, in order, attributed.
    let out = wardlink(&config_file, &["audit", "export", "--format", "jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), original.len());
    let of_room: Vec<&Value> = lines
        .iter()
        .filter(|l| l["conference"] == room.room_id.as_str())
        .collect();
    let actions: Vec<String> = of_room
        .iter()
        .map(|l| l["action"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        in_order(
            &actions,
            &[
                "conference_created",
                "invitation_issued",
                "join",
                "waiting",
                "waiting",
                "admit",
                "deny",
                "leave",
                "leave",
                "leave"
            ]
        ),
        "{actions:?}"
    );
    let find = |action: &str| {
        of_room
            .iter()
            .find(|l| l["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {actions:?}"))
    };
    assert_eq!(find("join")["actor"], format!("participant:{host_id}"));
    assert_eq!(find("join")["detail"]["role"], "host");
    assert_eq!(find("admit")["actor"], format!("participant:{host_id}"));
    assert_eq!(find("admit")["detail"]["subject"], cm_id.as_str());
    assert_eq!(find("admit")["detail"]["subject_role"], "care_manager");
    assert_eq!(find("deny")["detail"]["subject"], sv_id.as_str());
    assert_eq!(find("deny")["peer"], "127.0.0.1");
    for line in &lines {
        assert!(line["time_utc"].as_str().unwrap().ends_with('Z'), "{line}");
        assert_eq!(line["hash"].as_str().unwrap().len(), 64);
    }

    let out = wardlink(&config_file, &["audit", "export", "--format", "csv"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let records = parse_csv(&stdout(&out));
    assert_eq!(
        records[0],
        [
            "seq",
            "time_utc",
            "ts_ms",
            "actor",
            "action",
            "conference",
            "peer",
            "detail",
            "prev_hash",
            "hash",
            "mac"
        ]
    );
    assert_eq!(records.len(), original.len() + 1);
    for (record, line) in records[1..].iter().zip(&lines) {
        assert_eq!(record.len(), 11, "{record:?}");
        assert_eq!(record[0], line["seq"].to_string());
        assert_eq!(record[3], line["actor"].as_str().unwrap());
        assert_eq!(record[4], line["action"].as_str().unwrap());
        assert_eq!(record[9], line["hash"].as_str().unwrap());
        // The detail column is the canonical JSON itself, quotes and commas intact.
        assert_eq!(
            serde_json::from_str::<Value>(&record[7]).unwrap(),
            line["detail"]
        );
    }

    // ---- tampering, each on its own copy of the untouched files.
    let admit = original
        .iter()
        .find(|r| r.action == "admit")
        .unwrap()
        .clone();
    let last = original.last().unwrap().clone();

    // (b) A middle entry deleted (the delete trigger dropped first).
    let (dir, config) = fresh_copy(&data, &root.0, "deleted");
    let conn = open_db(&dir);
    conn.execute_batch("DROP TRIGGER audit_log_no_delete")
        .unwrap();
    conn.execute("DELETE FROM audit_log WHERE seq = ?1", [admit.seq])
        .unwrap();
    drop(conn);
    assert_tampered(
        &wardlink(&config, &["audit", "verify"]),
        admit.seq + 1,
        &format!("entry #{} is missing", admit.seq),
        "deleted middle entry",
    );

    // (c) A forged entry appended with a correct hash chain but without the audit key.
    let (dir, config) = fresh_copy(&data, &root.0, "forged");
    let conn = open_db(&dir);
    let mut forged = Row {
        seq: last.seq + 1,
        ts_ms: last.ts_ms + 1,
        actor: format!("participant:{host_id}"),
        action: "admit".into(),
        conference: Some(room.room_id.clone()),
        peer: Some("127.0.0.1".into()),
        detail: json!({ "subject": sv_id }).to_string(),
        prev_hash: last.hash.clone(),
        hash: String::new(),
    };
    forged.hash = hash_of(&forged);
    let mut mac = <Hmac<Sha256>>::new_from_slice(&rand::random::<[u8; 32]>()).unwrap();
    mac.update(&hex::decode(&forged.hash).unwrap());
    conn.execute(
        "INSERT INTO audit_log (seq, ts_ms, actor, action, conference, peer, detail, prev_hash, hash, mac) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        rusqlite::params![
            forged.seq,
            forged.ts_ms,
            forged.actor,
            forged.action,
            forged.conference,
            forged.peer,
            forged.detail,
            forged.prev_hash,
            forged.hash,
            hex::encode(mac.finalize().into_bytes())
        ],
    )
    .unwrap();
    drop(conn);
    assert_tampered(
        &wardlink(&config, &["audit", "verify"]),
        forged.seq,
        "MAC mismatch",
        "forged entry",
    );

    // An entry rewritten and re-hashed: the chain math is right, the MAC is not.
    let (dir, config) = fresh_copy(&data, &root.0, "rehashed");
    let conn = open_db(&dir);
    conn.execute_batch("DROP TRIGGER audit_log_no_update")
        .unwrap();
    let mut rewritten = admit.clone();
    rewritten.actor = "participant:someone-else".into();
    rewritten.hash = hash_of(&rewritten);
    conn.execute(
        "UPDATE audit_log SET actor = ?2, hash = ?3 WHERE seq = ?1",
        rusqlite::params![rewritten.seq, rewritten.actor, rewritten.hash],
    )
    .unwrap();
    drop(conn);
    assert_tampered(
        &wardlink(&config, &["audit", "verify"]),
        admit.seq,
        "MAC mismatch",
        "rewritten and re-hashed entry",
    );

    // The newest entry deleted: the chain is still whole, the anchor is not.
    let (dir, config) = fresh_copy(&data, &root.0, "truncated");
    let conn = open_db(&dir);
    conn.execute_batch("DROP TRIGGER audit_log_no_delete")
        .unwrap();
    conn.execute("DELETE FROM audit_log WHERE seq = ?1", [last.seq])
        .unwrap();
    drop(conn);
    assert_tampered(
        &wardlink(&config, &["audit", "verify"]),
        last.seq,
        "truncated",
        "newest entry deleted",
    );

    // The copies did not touch the original, which still verifies.
    let out = wardlink(&config_file, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // (a) Finally the real file: the update trigger refuses an edit until it is dropped,
    // and then the edit is caught.
    let conn = open_db(&data);
    assert!(
        conn.execute(
            "UPDATE audit_log SET actor = 'participant:someone-else' WHERE seq = ?1",
            [admit.seq]
        )
        .is_err(),
        "the append-only trigger let an UPDATE through"
    );
    conn.execute_batch("DROP TRIGGER audit_log_no_update")
        .unwrap();
    conn.execute(
        "UPDATE audit_log SET actor = 'participant:someone-else' WHERE seq = ?1",
        [admit.seq],
    )
    .unwrap();
    drop(conn);
    assert_tampered(
        &wardlink(&config_file, &["audit", "verify"]),
        admit.seq,
        "content does not match its hash",
        "edited actor",
    );
}
