//! A real Redis for tests: Debian's `redis-server` (installed with apt-get if missing),
//! started on a free port without persistence, stopped (SIGKILL) at the end or on demand.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
}

fn ensure_installed() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
    {
        return;
    }
    let installed = Command::new("sh")
        .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server"])
        .status()
        .expect("run apt-get");
    assert!(
        installed.success(),
        "could not install redis-server with apt-get"
    );
}

impl Redis {
    pub fn start() -> Self {
        ensure_installed();
        let port = free_port();
        let mut redis = Self {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory",
                "64mb",
                "--maxmemory-policy",
                "allkeys-lru",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: Redis goes away without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port (empty: nothing was persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
