//! corekv-node: the corekv server binary. Parses the configuration, starts the node, and turns
//! start-up failures into one clear line on stderr and a non-zero exit.

mod client;
mod commands;
mod config;
mod conn;
mod coord;
mod info;
mod node;
mod shard;
mod stats;

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COREKV_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = config::Cli::parse();
    let config = match config::Config::resolve(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("corekv-node: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = node::run(config) {
        eprintln!("corekv-node: {e}");
        std::process::exit(1);
    }
}
