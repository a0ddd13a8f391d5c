//! `corekv-bench`: see the library's documentation (`src/lib.rs`) and `benches/BENCH.md`.

use clap::Parser;

fn main() {
    let cli = corekv_bench::config::Cli::parse();
    std::process::exit(corekv_bench::app::run(&cli));
}
