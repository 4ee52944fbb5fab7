//! Helpers for the operator tests: scratch directories, config files,
//! certificates made by the tests (rcgen), the Clerk fixtures, and running
//! the real binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clerk_introspect::config::Config;
use clerk_introspect::config::{Layer, Loader};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_clerk-introspect");
pub const FIXTURES: &str = include_str!("../data/clerk-js-fixtures.json");

/// The Clerk SDK fixtures (a real Clerk token, its JWKS, altered copies).
pub fn fixtures() -> Value {
    serde_json::from_str(FIXTURES).unwrap()
}

/// A scratch directory, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("clerk-introspect-it-{}-{:016x}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `contents` to `name` atomically (write, then rename), as
    /// deployment tools do, so a watcher never reads half a file.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = self.path(&format!(".{}.tmp", fastrand::u64(..)));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    pub fn s(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Loads a config file as `serve --config FILE` would (no other flags).
pub fn load_config(path: &Path) -> Config {
    source(path).load().unwrap_or_else(|e| panic!("{e}"))
}

/// The loader of `serve --config FILE` (no environment).
pub fn source(path: &Path) -> Loader {
    Loader::for_file(path, Layer::default())
}

/// A CA and certificates it issued: a server certificate for localhost and
/// 127.0.0.1, and a client certificate.
pub struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();

        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut client_params = rcgen::CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

        Pki {
            ca: ca.pem(),
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client_cert.pem(),
            client_key: client_key.serialize_pem(),
        }
    }

    /// Writes the files under `prefix` in `dir`: `{prefix}ca.pem`, ...
    pub fn write(&self, dir: &Scratch, prefix: &str) {
        dir.write(&format!("{prefix}ca.pem"), &self.ca);
        dir.write(&format!("{prefix}server.crt"), &self.server_cert);
        dir.write(&format!("{prefix}server.key"), &self.server_key);
        dir.write(&format!("{prefix}client.crt"), &self.client_cert);
        dir.write(&format!("{prefix}client.key"), &self.client_key);
    }
}

/// Runs the binary to completion (on a blocking thread, so an in-process
/// server on the test's runtime keeps serving), with `stdin` fed in.
pub async fn run_bin(args: &[&str], stdin: Option<&str>) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(&args)
            .env("RUST_LOG", "warn")
            .env_remove("INTROSPECT_ADDR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the binary");
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `serve` process whose log lines are collected.
pub struct ServeProcess {
    pub child: Child,
    pub addr: String,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
    cursor: usize,
}

impl ServeProcess {
    /// Starts `serve` with `args` (listen on 127.0.0.1:0 is added) and
    /// waits for it to log its address.
    pub fn start(args: &[&str]) -> ServeProcess {
        Self::start_with_env(args, &[])
    }

    /// [`ServeProcess::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ServeProcess {
        Self::spawn(Command::new(BIN), args, env)
    }

    /// [`ServeProcess::start`] under an open-files limit set by the shell
    /// (`ulimit` then `exec`), such as `-n 300` or `-Sn 300`.
    pub fn start_with_ulimit(ulimit: &str, args: &[&str]) -> ServeProcess {
        let mut sh = Command::new("sh");
        sh.args(["-c", &format!("ulimit {ulimit} && exec \"$0\" \"$@\""), BIN]);
        Self::spawn(sh, args, &[])
    }

    fn spawn(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> ServeProcess {
        let mut child = command
            .arg("serve")
            // Tests run in parallel: never the shared default metrics port.
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut p = ServeProcess { child, addr: String::new(), lines: rx, log: Vec::new(), cursor: 0 };
        let (_, line) = p.find_line("serving gRPC addr=");
        p.addr = line.split("serving gRPC addr=").nth(1).unwrap().trim().to_owned();
        p
    }

    /// Waits (at most 20 s) for a log line containing `needle` after the
    /// last line this returned, and returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let (i, line) = self.find_line(needle);
        self.cursor = i + 1;
        line
    }

    fn find_line(&mut self, needle: &str) -> (usize, String) {
        if let Some(i) = self.log[self.cursor..].iter().position(|l| l.contains(needle)) {
            let i = self.cursor + i;
            return (i, self.log[i].clone());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return (self.log.len() - 1, line);
                    }
                }
                Err(_) => panic!("no log line containing {needle:?}; log so far:\n{}", self.log.join("\n")),
            }
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// SIGTERM, and the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        self.child.wait().unwrap().code()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
