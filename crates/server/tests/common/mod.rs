//! The `keel serve` process harness shared by the integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_keel");

pub struct Server {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("keel.toml");
    std::fs::write(&p, format!("segment_size = 4194304\n{extra}")).unwrap();
    p
}

impl Server {
    pub fn spawn(dir: &Path, config: &Path, env: &[(&str, &str)]) -> (Child, u16, PathBuf) {
        Server::spawn_with(dir, config, env, &[])
    }

    /// Starts `keel serve` with extra arguments (`{port}` in them becomes a
    /// second free port).
    pub fn spawn_with(
        dir: &Path,
        config: &Path,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> (Child, u16, PathBuf) {
        let port = free_port();
        let log = dir.join(format!("server-{port}.log"));
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--port", &port.to_string(), "--working-dir"])
            .arg(dir.join("data"))
            .arg("--config")
            .arg(config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        (cmd.spawn().expect("start keel serve"), port, log)
    }

    pub fn start(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_with(dir, config, env, &[])
    }

    /// [`Server::start`] with extra arguments for `keel serve`.
    pub fn start_with(dir: &Path, config: &Path, env: &[(&str, &str)], extra: &[&str]) -> Server {
        let (child, port, log) = Server::spawn_with(dir, config, env, extra);
        let s = Server {
            child: Some(child),
            port,
            dir: dir.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // 200; or 400, a TLS listener's answer to plain text.
            if let Ok((200 | 400, _)) = raw(
                port,
                "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            ) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "server did not come up: {}",
                s.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }

    pub fn term(&mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self, config: &Path) {
        *self = Server::start(&self.dir.clone(), config, &[]);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One raw HTTP/1.1 exchange with `Connection: close`: (status, body).
pub fn raw(port: u16, request: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = || std::io::Error::other("malformed response");
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad())?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, buf[head_end + 4..].to_vec()))
}
