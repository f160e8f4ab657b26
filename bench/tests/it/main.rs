//! The `strata-bench` binary's command line (the benches themselves run
//! through `strata bench …` in the api crate's tests, which pin their
//! output).

use std::process::Command;

fn strata_bench() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata-bench"));
    for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("STRATA_")) {
        command.env_remove(key);
    }
    command
}

#[test]
fn help_lists_every_bench_under_the_strata_bench_name() {
    let output = strata_bench().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("Usage: strata bench"), "{help}");
    for bench in ["append", "relay", "project", "rebuild", "e2e", "flood", "commands"] {
        assert!(help.lines().any(|line| line.trim_start().starts_with(bench)), "{bench} missing from:\n{help}");
    }
}

#[test]
fn a_duration_that_is_not_a_number_of_seconds_is_refused_before_anything_runs() {
    let output = strata_bench().args(["append", "--duration", "ten"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("\"ten\" is not a number of seconds"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn an_unknown_bench_is_refused_naming_it() {
    let output = strata_bench().arg("throughput").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr).unwrap().contains("'throughput'"));
}
