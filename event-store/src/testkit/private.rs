//! Private services for one test binary. Where no `STRATA_TEST_*` URL names
//! a service, the first test that needs it starts one from the installed
//! binaries (`initdb`/`postgres`, `nats-server`, `redis-server`,
//! `nx-27017`) on a free loopback port, in a scratch directory, and every
//! later test of the binary shares it. A watcher process stops the server
//! and removes the directory once the test binary has exited, however it
//! ended. Where the binary is not installed, the tests use the service's
//! standard local port instead (and fail there, naming how to start it, if
//! nothing answers).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::Service;

/// How long a private server may take to answer after it was started.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The URL of this test binary's private instance of `service`, started on
/// first use; `None` when its binary is not installed. Panics (with the
/// server's log) when the binary is there but the server does not come up.
pub(super) fn url(service: Service) -> Option<String> {
    static POSTGRES: OnceLock<Option<String>> = OnceLock::new();
    static NATS: OnceLock<Option<String>> = OnceLock::new();
    static REDIS: OnceLock<Option<String>> = OnceLock::new();
    static MONGO: OnceLock<Option<String>> = OnceLock::new();
    let (cell, start): (_, fn() -> Option<String>) = match service {
        Service::Postgres => (&POSTGRES, postgres),
        Service::Nats => (&NATS, nats),
        Service::Redis => (&REDIS, redis),
        Service::Mongo => (&MONGO, mongo),
        Service::Kafka => return None,
    };
    cell.get_or_init(start).clone()
}

fn postgres() -> Option<String> {
    let bin = postgres_bin_dir()?;
    let owner = server_user();
    let port = started("postgres", |dir, port| {
        let data = dir.join("data");
        std::fs::create_dir(&data).map_err(|err| format!("creating {}: {err}", data.display()))?;
        if let Some((uid, gid)) = owner {
            // PostgreSQL refuses to run as root: its files and process belong to `postgres`.
            for path in [dir, data.as_path()] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|err| format!("chown {}: {err}", path.display()))?;
            }
        }
        let log = std::fs::File::create(dir.join("initdb.log")).map_err(|err| err.to_string())?;
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C", "--no-sync", "-D"]).arg(&data);
        let status = as_owner(&mut initdb, owner)
            .current_dir(dir)
            .stdout(log.try_clone().map_err(|err| err.to_string())?)
            .stderr(log)
            .status()
            .map_err(|err| format!("initdb: {err}"))?;
        if !status.success() {
            return Err(format!("initdb exited with {status}: {}", tail(&dir.join("initdb.log"))));
        }
        let mut server = Command::new(bin.join("postgres"));
        server.arg("-D").arg(&data).args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-k"]).arg(dir);
        // The shared server's limit: the tests open as many pools here as there.
        server.args(["-c", "max_connections=100"]);
        as_owner(&mut server, owner).current_dir(dir);
        Ok((server, Signal::Interrupt))
    })?;
    Some(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

fn nats() -> Option<String> {
    let binary = installed("nats-server")?;
    let port = started("nats", |dir, port| {
        Ok((server(&binary, &["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"], &dir.join("jetstream")), Signal::Terminate))
    })?;
    Some(format!("nats://127.0.0.1:{port}"))
}

fn redis() -> Option<String> {
    let binary = installed("redis-server")?;
    let port = started("redis", |dir, port| {
        let args = ["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no", "--dir"];
        Ok((server(&binary, &args, dir), Signal::Terminate))
    })?;
    Some(format!("redis://127.0.0.1:{port}"))
}

fn mongo() -> Option<String> {
    let binary = installed("nx-27017").or_else(|| {
        let venvs = [
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/strata-venv-mongo")),
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-mongo")),
        ];
        venvs.into_iter().flatten().map(|venv| venv.join("bin/nx-27017")).find(|path| path.is_file())
    })?;
    let port = started("mongo", |dir, port| {
        let args = ["--db", "memory", "--host", "127.0.0.1", "-p", &port.to_string(), "--log-file"];
        let mut command = server(&binary, &args, &dir.join("nx-27017.log"));
        // Its default pid file is one per machine: with it, a second server
        // (another test binary's, still stopping) refuses to start.
        command.arg("--pid-file").arg(dir.join("nx-27017.pid"));
        Ok((command, Signal::Terminate))
    })?;
    Some(format!("mongodb://127.0.0.1:{port}/?directConnection=true"))
}

/// `binary` with `args`, then a path.
fn server(binary: &Path, args: &[&str], path: &Path) -> Command {
    let mut command = Command::new(binary);
    command.args(args).arg(path);
    command
}

/// How the watcher asks a server to stop.
#[derive(Clone, Copy)]
enum Signal {
    /// SIGINT: PostgreSQL's fast shutdown.
    Interrupt,
    /// SIGTERM.
    Terminate,
}

/// Starts the server `command` builds for a scratch directory and a free
/// port, waits until it answers, and leaves a watcher behind; returns the
/// port. A port taken between choosing and binding it is retried.
fn started(name: &str, command: impl Fn(&Path, u16) -> Result<(Command, Signal), String>) -> Option<u16> {
    let mut failures = Vec::new();
    for _ in 0..3 {
        let dir = std::env::temp_dir().join(format!("strata-test-{name}-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
        let attempt = std::fs::create_dir(&dir).map_err(|err| format!("creating {}: {err}", dir.display())).and_then(|()| {
            let port = free_port()?;
            let (mut server, signal) = command(&dir, port)?;
            let log = std::fs::File::create(dir.join("server.log")).map_err(|err| err.to_string())?;
            let mut child = server
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|err| err.to_string())?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .map_err(|err| format!("starting {name}: {err}"))?;
            watch(child.id(), signal, &dir)?;
            let deadline = Instant::now() + READY_WITHIN;
            while !answers(name, port) {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("{name} exited with {status}: {}", tail(&dir.join("server.log"))));
                }
                if Instant::now() > deadline {
                    return Err(format!("{name} did not answer on port {port} within {READY_WITHIN:?}: {}", tail(&dir.join("server.log"))));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(port)
        });
        match attempt {
            Ok(port) => return Some(port),
            Err(failure) => failures.push(failure),
        }
    }
    panic!("a private {name} for this test binary did not start (set its STRATA_TEST_* URL to use a running one):\n{}", failures.join("\n"))
}

/// Does the server answer on `port` as itself?
fn answers(name: &str, port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else {
        return false;
    };
    match name {
        // NATS greets every connection with INFO once it serves (JetStream included).
        "nats" => {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut greeting = [0; 4];
            stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO"
        }
        // PostgreSQL accepts connections while it still recovers: ask it.
        "postgres" => postgres_bin_dir().is_some_and(|bin| {
            Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|status| status.success())
        }),
        _ => true,
    }
}

/// A process of its own (outside the test's process group, so Ctrl-C does
/// not take it first) that waits for this test binary to exit, then stops
/// the server and removes its directory.
fn watch(server: u32, signal: Signal, dir: &Path) -> Result<(), String> {
    let signal = match signal {
        Signal::Interrupt => "INT",
        Signal::Terminate => "TERM",
    };
    let script = format!(
        "while kill -0 {test} 2>/dev/null; do sleep 1; done; kill -{signal} {server} 2>/dev/null; \
         for _ in $(seq 100); do kill -0 {server} 2>/dev/null || break; sleep 0.1; done; \
         kill -KILL {server} 2>/dev/null; rm -rf '{dir}'",
        test = std::process::id(),
        dir = dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|err| format!("starting the watcher: {err}"))
}

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|err| format!("choosing a port: {err}"))?;
    listener.local_addr().map(|address| address.port()).map_err(|err| err.to_string())
}

/// `name` on `PATH` or in the system directories Debian installs servers to.
fn installed(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The directory holding `initdb`, `postgres` and `pg_isready`: on `PATH`,
/// else Debian's newest `/usr/lib/postgresql/N/bin`.
fn postgres_bin_dir() -> Option<PathBuf> {
    if let Some(initdb) = installed("initdb") {
        let dir = std::fs::canonicalize(&initdb).ok()?.parent()?.to_path_buf();
        if dir.join("postgres").is_file() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The `postgres` account's uid and gid when this runs as root (PostgreSQL
/// will not), from `/etc/passwd`.
fn server_user() -> Option<(u32, u32)> {
    let root = std::fs::metadata("/proc/self").is_ok_and(|me| std::os::unix::fs::MetadataExt::uid(&me) == 0);
    if !root {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let account = passwd.lines().find(|line| line.starts_with("postgres:"))?;
    let fields: Vec<&str> = account.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command
}

/// The last lines of a log, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
