//! corekv-node: the corekv server binary. Parses the configuration, starts the node, and turns
//! start-up failures into one clear line on stderr and a non-zero exit.

#[cfg(test)]
mod alloc_count;
mod client;
mod commands;
mod config;
mod conn;
mod coord;
mod info;
mod native;
mod node;
mod persist;
mod rdma_serve;
mod read_size;
mod shard;
mod stats;

use clap::Parser;

#[cfg(test)]
#[global_allocator]
static ALLOCATOR: alloc_count::CountingAllocator = alloc_count::CountingAllocator;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never in log files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COREKV_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
                // The one message of glommio's reactor is the failed I/O-polling probe that
                // corekv brings about on purpose (see `persist::files`).
                .add_directive("glommio::reactor=off".parse().expect("a valid directive")),
        )
        .init();
    // A bug in one shard must not leave a half-alive node whose other shards wait forever on it:
    // report the panic, then stop the whole process so a supervisor can restart it.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("corekv-node: internal error, aborting");
        std::process::abort();
    }));
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
