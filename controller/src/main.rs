use std::process::ExitCode;

use clap::Parser;
use edgefleet_controller::config::Command;
use edgefleet_controller::{Config, hub_reloader, run};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    if let Some(Command::HubReloader(args)) = config.command {
        hub_reloader::run(args).await;
        return ExitCode::SUCCESS;
    }
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
