//! corekv-node: the corekv server binary.

mod commands;

fn main() {}
