//! The `strata-bench` binary, which `strata bench …` runs: parses the
//! command line and runs the bench ([`strata_bench::cli`]) under telemetry
//! and a runtime, as `strata` does.

use std::process::ExitCode;

use clap::Parser;
use strata_bench::cli::{run, BenchCli};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = BenchCli::parse();
    strata_api::cli::start(async move { run(cli).await.map(|()| ExitCode::SUCCESS) })
}
