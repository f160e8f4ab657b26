//! Helpers: a raw HTTP GET, the binary, scratch SQLite files; PostgreSQL
//! databases come from `strata_store::testkit`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

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
        .env_remove("STRATA_SAGA_STEP_DEADLINE")
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

/// A `strata serve` process with some roles, its log appended to a file,
/// that a test can SIGKILL and start again.
pub struct Role {
    pub name: &'static str,
    pub env: Vec<(&'static str, String)>,
    pub log: std::path::PathBuf,
    pub child: Option<Child>,
    pub starts: usize,
}

impl Role {
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command
            .arg("serve")
            .env_remove("STRATA_LISTEN")
            .env("RUST_LOG", "info,sqlx=warn")
            .env("STRATA_ROLES", self.name)
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("start strata"));
        self.starts += 1;
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL"); // std's kill is SIGKILL on unix
            child.wait().unwrap();
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last 30 lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

