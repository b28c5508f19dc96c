//! The `echod` binary: parse flags, set up logging, build the config, bind, run, and turn
//! the result into an exit code. Everything else lives in the library.
//!
//! One binary, three roles: a single echod (the default), the master of `--workers N`,
//! or one of its workers (started by the master, which says so in `ECHOD_MASTER_FD`).

use std::process::ExitCode;

use clap::Parser;
use log::{info, warn};

use echod::Server;
use echod::cli::Args;
use echod::fdlimit::raise_descriptor_limit;
use echod::workers::Master;
use echod::workers::link::{MasterLink, SLOT_ENV};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version: print, exit 0
        Err(err) => {
            // Bad flags: clap's own message, on one line, and status 2.
            eprintln!("echod: {} (see --help)", one_line(&err));
            return ExitCode::from(2);
        }
    };
    let link = MasterLink::from_env();
    init_logging(args.log_filter(), link.is_some());

    let descriptor_limit = match raise_descriptor_limit() {
        Ok((before, after)) => {
            info!("descriptor limit: soft {before}, raised to {after}");
            Some(after)
        }
        Err(err) => {
            warn!("cannot read or raise the descriptor limit: {err}");
            None
        }
    };
    let mut config = args.into_config(descriptor_limit);
    if let Some(link) = link {
        return run_worker(config, link);
    }
    if config.workers > 1 {
        return run_master(config);
    }
    info!("max connections: {}", config.max_connections);
    config.workers = 1;
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("echod: {err}");
            return ExitCode::from(1);
        }
    };
    match server.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("echod: event loop failed: {err}");
            ExitCode::from(1)
        }
    }
}

/// The master of `--workers`: binds, starts the workers, supervises them.
fn run_master(config: echod::Config) -> ExitCode {
    let master = match Master::bind(config) {
        Ok(master) => master,
        Err(err) => {
            eprintln!("echod: {err}");
            return ExitCode::from(1);
        }
    };
    match master.run() {
        Ok(status) => ExitCode::from(status),
        Err(err) => {
            eprintln!("echod: master loop failed: {err}");
            ExitCode::from(1)
        }
    }
}

/// A worker: today's loop on the sockets the master passed (adopted as from systemd),
/// with the master's link instead of systemd and without its own metrics.
fn run_worker(mut config: echod::Config, link: std::io::Result<MasterLink>) -> ExitCode {
    let link = match link {
        Ok(link) => link,
        Err(err) => {
            eprintln!("echod: worker: {err}");
            return ExitCode::from(1);
        }
    };
    config.listen.clear();
    config.inherit_sockets = true;
    config.systemd_notify = false;
    config.metrics = None;
    config.workers = 1;
    let mut server = match Server::bind(config) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("echod: worker: {err}");
            return ExitCode::from(1);
        }
    };
    if let Err(err) = server.attach_master(link) {
        eprintln!("echod: worker: cannot watch the master's link: {err}");
        return ExitCode::from(1);
    }
    match server.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("echod: worker: event loop failed: {err}");
            ExitCode::from(1)
        }
    }
}

/// env_logger with `-v`/`-q`'s filter (RUST_LOG wins). A worker's lines say which worker
/// wrote them, since all of them share the master's stderr.
fn init_logging(default_filter: &str, worker: bool) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter));
    if worker {
        let slot = std::env::var(SLOT_ENV).unwrap_or_else(|_| "?".to_string());
        builder.format(move |buf, record| {
            use std::io::Write;
            writeln!(
                buf,
                "[{} {:<5} {} worker {slot}] {}",
                buf.timestamp(),
                record.level(),
                record.target(),
                record.args()
            )
        });
    }
    builder.init();
}

/// clap's message without its usage block and hints, folded onto one line.
fn one_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let lines: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more"))
        .filter(|line| !line.is_empty())
        .collect();
    lines.join(" ").trim_start_matches("error: ").to_string()
}
