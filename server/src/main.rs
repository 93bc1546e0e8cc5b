//! The `wardlink` command: runs the server and creates conferences.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wardlink::config::Config;
use wardlink::keys::Keys;

/// Title of the conference created when `wardlink` runs with no subcommand.
const DEMO_TITLE: &str = "デモ会議 (demo)";

/// wardlink: self-hosted secure video case conferences for home medical and nursing care.
///
/// With no subcommand, starts the server and prints join links for a demo conference.
#[derive(Parser, Debug)]
#[command(name = "wardlink", version, about, long_about)]
struct Cli {
    /// TOML configuration file (see deploy/wardlink.example.toml). Environment variables
    /// WARDLINK_* override its values.
    #[arg(
        long,
        short = 'c',
        global = true,
        value_name = "FILE",
        env = "WARDLINK_CONFIG"
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTPS/WebSocket and media server until Ctrl-C or SIGTERM.
    Serve {
        /// Also create a demo conference and print its join links.
        #[arg(long)]
        demo: bool,
    },
    /// Manage conferences.
    #[command(subcommand)]
    Room(RoomCommand),
    /// Check or export the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage staff accounts (works whether or not the server is running).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage invitation links.
    #[command(subcommand)]
    Invite(InviteCommand),
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create a staff account. The password is read from WARDLINK_NEW_PASSWORD or asked for
    /// twice on the terminal (at least 12 characters). The user enrols an authenticator app
    /// at first login.
    Add {
        /// Login name (3-64 characters: a-z, 0-9, '.', '_', '-').
        #[arg(long)]
        username: String,
        /// Name shown to other participants, e.g. "佐藤 花子".
        #[arg(long)]
        name: String,
        /// nurse, doctor, msw or admin.
        #[arg(long)]
        profession: wardlink::accounts::Profession,
        /// May manage accounts.
        #[arg(long)]
        admin: bool,
    },
    /// List staff accounts.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disable an account and end its sessions.
    Disable {
        /// The account's login name.
        #[arg(long)]
        username: String,
    },
    /// Forget an account's TOTP secret (e.g. a lost phone): it enrols again at next login.
    ResetTotp {
        /// The account's login name.
        #[arg(long)]
        username: String,
    },
    /// Turn the second factor off for an account (an exception; audited).
    DisableTotp {
        /// The account's login name.
        #[arg(long)]
        username: String,
    },
}

#[derive(Subcommand, Debug)]
enum InviteCommand {
    /// Revoke an invitation: its link stops working at once.
    Revoke {
        /// The invitation id (printed with each link).
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum RoomCommand {
    /// Create a conference and print one join link per role (host, care manager, surveyor).
    ///
    /// Works whether or not the server is running: links are signed with the key in the data
    /// directory, and the server opens the conference when the first participant joins.
    Create {
        /// Conference title shown to participants (1-120 characters).
        #[arg(long, short = 't')]
        title: String,
        /// Hours after the scheduled time the links keep working (default: link_valid_hours
        /// for a conference starting now, invitation_late_hours for a scheduled one).
        #[arg(long, value_name = "HOURS")]
        valid_hours: Option<u64>,
        /// Scheduled start, RFC 3339 (e.g. 2025-06-01T14:00:00+09:00). Links then work from
        /// invitation_early_minutes before it. Default: now.
        #[arg(long, value_name = "TIME")]
        scheduled: Option<String>,
        /// An invitation as ROLE:NAME (roles: host, staff, care_manager, surveyor, family);
        /// repeat for each. Default: host, care_manager and surveyor.
        #[arg(long = "invite", value_name = "ROLE:NAME")]
        invite: Vec<String>,
        /// Print the links as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check every entry's hash, MAC and chain link and the anchor of the newest entry.
    ///
    /// Prints "audit log OK: N entries" and exits 0, or names the first bad entry and exits 1.
    /// Safe to run while the server is running.
    Verify,
    /// Write entries to stdout, oldest first.
    ///
    /// Bounds are RFC 3339 times (2025-04-01T09:00:00+09:00) or UTC dates (2025-04-01);
    /// a date given to --to includes that whole day. Both bounds are inclusive.
    Export {
        /// First time to include (default: the beginning).
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// Last time to include (default: now).
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "csv")]
        format: AuditFormat,
        /// Start CSV output with a UTF-8 byte order mark, so Excel shows Japanese correctly.
        #[arg(long)]
        bom: bool,
    },
}

/// `--format` values of `audit export`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum AuditFormat {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

fn main() -> std::process::ExitCode {
    // Before any thread exists, so every thread shares the few arenas.
    wardlink::memory::limit_arenas();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    init_tracing(&config.log_level)?;
    match cli.command {
        None => serve(config, true),
        Some(Command::Serve { demo }) => serve(config, demo),
        Some(Command::Room(RoomCommand::Create {
            title,
            valid_hours,
            scheduled,
            invite,
            json,
        })) => create_room(
            &config,
            &title,
            valid_hours,
            scheduled.as_deref(),
            &invite,
            json,
        ),
        Some(Command::User(command)) => user_command(&config, command),
        Some(Command::Invite(command)) => invite_command(&config, command),
        Some(Command::Audit(command)) => audit_command(&config, command),
    }
}

fn init_tracing(filter: &str) -> anyhow::Result<()> {
    // webrtc-rs logs every state change at INFO; keep its crates at WARN unless the
    // operator's filter names them.
    let filter = if filter.contains("rtc") {
        filter.to_string()
    } else {
        format!("{filter},rtc=error,rtc_ice=warn,rtc_dtls=error,rtc_sctp=warn,rtc_srtp=warn,rtc_interceptor=warn,webrtc=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .with_context(|| format!("invalid log level {filter:?}"))?;
    // try_init also installs the `log` bridge (tracing-log), so webrtc/rtc log records appear.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot initialise logging: {e}"))
}

fn serve(config: Config, demo: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = wardlink::server::start(config).await?;
        if demo {
            let room = server.create_room(DEMO_TITLE)?;
            print_banner(&room.to_text());
        }
        server.serve_until(shutdown_signal()).await
    })
}

/// Completes on Ctrl-C, or SIGTERM on unix (what systemd and container runtimes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

fn create_room(
    config: &Config,
    title: &str,
    valid_hours: Option<u64>,
    scheduled: Option<&str>,
    invite: &[String],
    json: bool,
) -> anyhow::Result<()> {
    use wardlink::conferences::{self, InvitationSpec, InvitationWindow};

    wardlink::links::validate_title(title)?;
    let now = wardlink::store::now_ms();
    let scheduled_ms = match scheduled {
        Some(t) => conferences::parse_rfc3339(t).with_context(|| {
            format!("--scheduled {t:?} is not an RFC 3339 time (e.g. 2025-06-01T14:00:00+09:00)")
        })?,
        None => now,
    };
    let default_hours = if scheduled.is_some() {
        config.security.invitation_late_hours
    } else {
        config.link_valid_hours
    };
    let hours = valid_hours.unwrap_or(default_hours);
    if hours == 0 || hours > wardlink::config::MAX_LINK_VALID_HOURS {
        anyhow::bail!(
            "--valid-hours must be 1..={}, got {hours}",
            wardlink::config::MAX_LINK_VALID_HOURS
        );
    }
    let not_before_ms = if scheduled.is_some() {
        InvitationWindow::from_config(config).around(scheduled_ms).0
    } else {
        now
    };
    let expires_ms = scheduled_ms.saturating_add(i64::try_from(hours)? * 3_600_000);
    let invitations = if invite.is_empty() {
        conferences::default_invitations()
    } else {
        invite
            .iter()
            .map(|spec| {
                let (role, name) = spec.split_once(':').with_context(|| {
                    format!("--invite {spec:?} must be ROLE:NAME, e.g. care_manager:ケアマネジャー")
                })?;
                let role = role
                    .trim()
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("--invite {spec:?}: {e}"))?;
                Ok(InvitationSpec {
                    role,
                    display_name: name.trim().to_owned(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if config.public_url.is_none() && config.listen.port() == 0 {
        anyhow::bail!("listen has port 0, so links cannot name the server's port; set public_url or a fixed port");
    }
    if !invitations
        .iter()
        .any(|i| i.role == wardlink_signaling::Role::Host)
    {
        eprintln!(
            "note: no host invitation; nobody in this conference can admit waiting participants"
        );
    }
    if !Keys::path(&config.data_dir).exists() {
        eprintln!(
            "warning: no signing key in {}; creating one. If the server uses another data_dir, \
             these links will be rejected.",
            config.data_dir.display()
        );
    }
    let keys = Keys::load_or_create(&config.data_dir)?;
    let (store, audit) = open_store(config)?;
    let room = conferences::create_conference(
        &store.lock(),
        &keys.signer,
        &config.base_url(),
        &conferences::NewConference {
            title,
            scheduled_ms,
            not_before_ms,
            expires_ms,
            created_by: None,
            invitations: &invitations,
        },
        now,
    )?;
    conferences::audit_created(&audit, "cli", None, &room, scheduled_ms)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&room)?);
    } else {
        print!("{}", room.to_text());
    }
    Ok(())
}

/// Opens (creating if needed) the database and audit log of the data directory, for the
/// commands that write to them.
fn open_store(config: &Config) -> anyhow::Result<(wardlink::store::Store, wardlink::audit::Audit)> {
    wardlink::keys::create_private_dir(&config.data_dir)?;
    let store = wardlink::store::Store::open(&config.data_dir)?;
    let audit = wardlink::audit::Audit::open(
        store.clone(),
        &config.data_dir,
        config.security.audit_redact_peer,
    )?;
    Ok((store, audit))
}

/// Records an action taken from the command line.
fn audit_cli(
    audit: &wardlink::audit::Audit,
    action: &'static str,
    conference: Option<String>,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    audit
        .record(wardlink::audit::AuditEvent {
            actor: "cli".into(),
            action,
            conference,
            peer: None,
            detail,
        })
        .context("cannot write the audit log")
}

fn user_command(config: &Config, command: UserCommand) -> anyhow::Result<()> {
    use wardlink::accounts;

    let (store, audit) = open_store(config)?;
    let now = wardlink::store::now_ms();
    match command {
        UserCommand::Add {
            username,
            name,
            profession,
            admin,
        } => {
            // Check the cheap things before asking for a password.
            let username = accounts::validate_username(&username)?;
            accounts::validate_display_name(&name)?;
            if accounts::find_user(&store.lock(), &username)?.is_some() {
                anyhow::bail!("the username {username:?} is already taken");
            }
            let password = new_password()?;
            let user = accounts::create_user(
                &store.lock(),
                &accounts::NewUser {
                    username,
                    display_name: name,
                    profession,
                    is_admin: admin,
                    password,
                },
                now,
            )?;
            audit_cli(
                &audit,
                "user_created",
                None,
                serde_json::json!({
                    "username": user.username,
                    "profession": user.profession,
                    "is_admin": user.is_admin,
                }),
            )?;
            println!(
                "created {} ({}, {}{}); they set up an authenticator app at first login",
                user.username,
                user.display_name,
                user.profession,
                if user.is_admin { ", administrator" } else { "" }
            );
        }
        UserCommand::List { json } => {
            let users = accounts::list_users(&store.lock())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                println!(
                    "{:<24} {:<8} {:<6} {:<9} {:<8} name",
                    "username", "prof.", "admin", "totp", "status"
                );
                for u in users {
                    let totp = if u.totp_disabled {
                        "off"
                    } else if u.totp_enrolled {
                        "enrolled"
                    } else {
                        "pending"
                    };
                    println!(
                        "{:<24} {:<8} {:<6} {:<9} {:<8} {}",
                        u.username,
                        u.profession.as_str(),
                        if u.is_admin { "yes" } else { "no" },
                        totp,
                        if u.disabled { "disabled" } else { "active" },
                        u.display_name
                    );
                }
            }
        }
        UserCommand::Disable { username } => {
            let user = accounts::disable_user(&store.lock(), &username)
                .with_context(|| format!("cannot disable {username:?}"))?;
            audit_cli(
                &audit,
                "user_disabled",
                None,
                serde_json::json!({ "username": user.username }),
            )?;
            println!("disabled {} and ended its sessions", user.username);
        }
        UserCommand::ResetTotp { username } => {
            let user = accounts::reset_totp(&store.lock(), &username)
                .with_context(|| format!("cannot reset TOTP of {username:?}"))?;
            audit_cli(
                &audit,
                "totp_reset",
                None,
                serde_json::json!({ "username": user.username }),
            )?;
            println!(
                "reset TOTP of {}: they enrol a new authenticator at next login",
                user.username
            );
        }
        UserCommand::DisableTotp { username } => {
            let user = accounts::disable_totp(&store.lock(), &username)
                .with_context(|| format!("cannot turn TOTP off for {username:?}"))?;
            audit_cli(
                &audit,
                "totp_disabled",
                None,
                serde_json::json!({ "username": user.username }),
            )?;
            println!(
                "turned the second factor off for {} (reset-totp turns it back on)",
                user.username
            );
        }
    }
    Ok(())
}

fn invite_command(config: &Config, command: InviteCommand) -> anyhow::Result<()> {
    let (store, audit) = open_store(config)?;
    match command {
        InviteCommand::Revoke { id } => {
            let info = wardlink::conferences::revoke_invitation(
                &store.lock(),
                id.trim(),
                wardlink::store::now_ms(),
            )
            .with_context(|| format!("cannot revoke invitation {id:?}"))?;
            audit_cli(
                &audit,
                "invitation_revoked",
                Some(info.conference_id.clone()),
                serde_json::json!({ "invitation_id": info.id, "role": info.role.as_str() }),
            )?;
            println!(
                "revoked invitation {} ({}) of conference {}",
                info.id, info.role, info.conference_id
            );
        }
    }
    Ok(())
}

/// The new account's password: `WARDLINK_NEW_PASSWORD`, or typed twice on the terminal.
fn new_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("WARDLINK_NEW_PASSWORD") {
        wardlink::accounts::validate_password(&p).context("WARDLINK_NEW_PASSWORD")?;
        return Ok(p);
    }
    let first = read_password("Password (at least 12 characters): ")?;
    wardlink::accounts::validate_password(&first)?;
    let second = read_password("Repeat the password: ")?;
    if first != second {
        anyhow::bail!("the passwords differ");
    }
    Ok(first)
}

/// Reads one line from stdin, with terminal echo off when stdin is a terminal.
fn read_password(prompt: &str) -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let tty = std::io::stdin().is_terminal();
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let echo_off = tty && set_echo(false);
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if echo_off {
        set_echo(true);
        eprintln!();
    }
    if read.context("cannot read the password")? == 0 {
        anyhow::bail!("no password given (set WARDLINK_NEW_PASSWORD or type it at the prompt)");
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Turns terminal echo on or off with `stty`; false if that is not possible.
fn set_echo(on: bool) -> bool {
    #[cfg(unix)]
    {
        std::process::Command::new("stty")
            .arg(if on { "echo" } else { "-echo" })
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    }
    #[cfg(not(unix))]
    {
        let _ = on;
        false
    }
}

fn print_banner(text: &str) {
    let rule = "=".repeat(78);
    println!("\n{rule}\n wardlink is running. Open these links in a browser:\n{rule}\n");
    for line in text.lines() {
        if line.is_empty() {
            println!();
        } else {
            println!(" {line}");
        }
    }
    println!("{rule}\n Press Ctrl-C to stop.\n");
}

/// Opens the audit log of an existing data directory (never creates one: verifying an empty
/// log in the wrong directory would report "OK").
fn open_audit(config: &Config) -> anyhow::Result<wardlink::audit::Audit> {
    let db = config.data_dir.join(wardlink::store::DB_FILE);
    if !db.is_file() {
        anyhow::bail!(
            "no database at {}; is data_dir right (use -c with the server's config file)?",
            db.display()
        );
    }
    let store = wardlink::store::Store::open(&config.data_dir)?;
    wardlink::audit::Audit::open(store, &config.data_dir, config.security.audit_redact_peer)
}

fn audit_command(config: &Config, command: AuditCommand) -> anyhow::Result<()> {
    let audit = open_audit(config)?;
    match command {
        AuditCommand::Verify => {
            let report = audit.verify()?;
            match report.first_bad {
                None => {
                    println!("audit log OK: {} entries", report.entries);
                    Ok(())
                }
                Some(bad) => {
                    println!("audit log TAMPERED: first bad entry {bad}");
                    drop(audit);
                    use std::io::Write as _;
                    let _ = std::io::stdout().flush();
                    // Exit status 1 is what cron jobs and monitoring check.
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::Export {
            from,
            to,
            format,
            bom,
        } => {
            let from_ms = from
                .map(|t| wardlink::audit::parse_time_bound(&t, false))
                .transpose()
                .context("--from")?;
            let to_ms = to
                .map(|t| wardlink::audit::parse_time_bound(&t, true))
                .transpose()
                .context("--to")?;
            if let (Some(f), Some(t)) = (from_ms, to_ms) {
                if f > t {
                    anyhow::bail!("--from is after --to");
                }
            }
            let format = match format {
                AuditFormat::Csv => wardlink::audit::ExportFormat::Csv,
                AuditFormat::Jsonl => wardlink::audit::ExportFormat::Jsonl,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            if bom && format == wardlink::audit::ExportFormat::Csv {
                std::io::Write::write_all(&mut out, "\u{feff}".as_bytes())?;
            }
            audit.export(from_ms, to_ms, format, &mut out)
        }
    }
}
