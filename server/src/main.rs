//! The `wardlink` command: runs the server and creates conferences.

use std::path::PathBuf;
use std::time::Duration;

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
        /// Hours the links stay valid (default: link_valid_hours from the configuration).
        #[arg(long, value_name = "HOURS")]
        valid_hours: Option<u64>,
        /// Print the links as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
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
            json,
        })) => create_room(&config, &title, valid_hours, json),
    }
}

fn init_tracing(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
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
    json: bool,
) -> anyhow::Result<()> {
    wardlink::links::validate_title(title)?;
    let hours = valid_hours.unwrap_or(config.link_valid_hours);
    if hours == 0 || hours > wardlink::config::MAX_LINK_VALID_HOURS {
        anyhow::bail!(
            "--valid-hours must be 1..={}, got {hours}",
            wardlink::config::MAX_LINK_VALID_HOURS
        );
    }
    if config.public_url.is_none() && config.listen.port() == 0 {
        anyhow::bail!("listen has port 0, so links cannot name the server's port; set public_url or a fixed port");
    }
    if !Keys::path(&config.data_dir).exists() {
        eprintln!(
            "warning: no signing key in {}; creating one. If the server uses another data_dir, \
             these links will be rejected.",
            config.data_dir.display()
        );
    }
    let keys = Keys::load_or_create(&config.data_dir)?;
    let room = wardlink::links::create_room(
        &keys.signer,
        &config.base_url(),
        title,
        Duration::from_secs(hours * 3600),
        wardlink::server::unix_now(),
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&room)?);
    } else {
        print!("{}", room.to_text());
    }
    Ok(())
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
