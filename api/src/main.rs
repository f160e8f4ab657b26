//! The `strata` binary: parses the command line and runs the command
//! ([`strata_api::cli`]) under telemetry and a runtime ([`strata_api::cli::start`]).

use std::process::ExitCode;

use clap::Parser;
use strata_api::cli::{run, start, Cli};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    start(run(cli))
}
