//! Helpers: a raw HTTP GET, the binary, scratch SQLite files; PostgreSQL
//! databases come from `strata_store::testkit`.

use std::net::SocketAddr;
use std::process::{Command, Output};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` over a fresh TCP connection: (status, body).
pub async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

pub fn strata() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    command.env_remove("STRATA_EVENT_STORE").env_remove("STRATA_LISTEN").env_remove("STRATA_BUS")
        .env_remove("STRATA_READ_MODEL")
        .env_remove("STRATA_ROLES")
        .env("RUST_LOG", "warn");
    command
}

pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("run strata");
    assert!(
        output.status.success(),
        "strata failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub struct ScratchSqlite {
    pub dir: tempfile::TempDir,
    pub url: String,
}

pub fn scratch_sqlite() -> ScratchSqlite {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("strata.db").display());
    ScratchSqlite { dir, url }
}

pub use strata_store::testkit::postgres::TestDatabase;
