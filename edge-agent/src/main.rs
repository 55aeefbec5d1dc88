use std::process::ExitCode;

use clap::Parser;
use edgefleet_agent::{Command, Config, join, run, self_pod};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let result = match &config.command {
        Some(Command::StaticPod { image }) => {
            self_pod::print(&config, image).map_err(|e| e.to_string())
        }
        Some(Command::Join(args)) => join::join(&config, args).await.map_err(|e| e.to_string()),
        None => run(config).await.map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
