//! The `echod` binary: parse flags, set up logging, build the config, bind, run, and turn
//! the result into an exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use log::{info, warn};

use echod::Server;
use echod::cli::Args;
use echod::fdlimit::raise_descriptor_limit;

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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(args.log_filter()))
        .init();

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
    let config = args.into_config(descriptor_limit);
    info!("max connections: {}", config.max_connections);

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
