//! Helpers: a raw HTTP GET, the binary, scratch SQLite files and PostgreSQL
//! databases (loud in CI when PostgreSQL is down).

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
    command.env_remove("STRATA_EVENT_STORE").env_remove("STRATA_LISTEN").env("RUST_LOG", "warn");
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

pub const POSTGRES_HOW_TO_START: &str = "pg_ctlcluster --skip-systemctl-redirect 15 main start";

pub fn postgres_admin_url() -> String {
    std::env::var("STRATA_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database; `None` (after a loud SKIPPED) when PostgreSQL is down
/// outside CI; a panic in CI.
pub async fn fresh_postgres() -> Option<(String, String)> {
    use sqlx::{Connection, Executor};
    let admin = postgres_admin_url();
    let mut connection = match sqlx::PgConnection::connect(&admin).await {
        Ok(connection) => connection,
        Err(err) => {
            if std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1") {
                panic!("PostgreSQL at {admin} is unreachable in CI ({err}); start it with: {POSTGRES_HOW_TO_START}");
            }
            eprintln!("\n*** SKIPPED: PostgreSQL at {admin} is unreachable ({err}); start it with: {POSTGRES_HOW_TO_START} ***\n");
            return None;
        }
    };
    let name = format!("strata_test_{}", uuid::Uuid::new_v4().simple());
    connection.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base).to_owned();
    Some((format!("{base}/{name}"), name))
}

pub async fn drop_postgres(name: &str) {
    use sqlx::{Connection, Executor};
    let mut connection = sqlx::PgConnection::connect(&postgres_admin_url()).await.unwrap();
    connection.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.unwrap();
}
