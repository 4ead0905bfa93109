//! A real etcd for tests: Debian's `etcd-server` (installed with apt-get if missing),
//! started on free client and peer ports with its own data directory, stopped at the end.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Etcd {
    child: Option<Child>,
    pub endpoint: String,
    client_port: u16,
    peer_port: u16,
    data_dir: tempfile::TempDir,
    /// Serve clients over TLS: (CA, server certificate, key); client certificates required.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

fn ensure_installed() {
    if Command::new("etcd").arg("--version").output().is_ok() {
        return;
    }
    let installed = Command::new("sh")
        .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server"])
        .status()
        .expect("run apt-get");
    assert!(
        installed.success(),
        "could not install etcd-server with apt-get"
    );
}

impl Etcd {
    /// A fresh etcd holding one cluster's settings (`quarry cluster create`).
    pub fn with_cluster(cluster: &str, shards: u32) -> Self {
        let etcd = Self::start();
        super::quarry_command(&[
            "cluster",
            "create",
            "--etcd",
            &etcd.endpoint,
            "--cluster",
            cluster,
            "--shards",
            &shards.to_string(),
        ]);
        etcd
    }

    pub fn start() -> Self {
        Self::launched(None)
    }

    /// An etcd that serves clients over TLS only and requires a client certificate from `ca`.
    pub fn start_tls(ca: PathBuf, cert: PathBuf, key: PathBuf) -> Self {
        Self::launched(Some((ca, cert, key)))
    }

    fn launched(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Self {
        ensure_installed();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_port = free_port();
        let mut etcd = Self {
            child: None,
            endpoint: format!("{scheme}://127.0.0.1:{client_port}"),
            client_port,
            peer_port: free_port(),
            data_dir: tempfile::tempdir().expect("etcd data dir"),
            tls,
        };
        etcd.launch();
        etcd
    }

    fn launch(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data: PathBuf = self.data_dir.path().join("etcd");
        let mut command = Command::new("etcd");
        if let Some((ca, cert, key)) = &self.tls {
            command
                .arg(format!("--trusted-ca-file={}", ca.display()))
                .arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name=quarry-test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=quarry-test={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "etcd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops etcd (SIGKILL) and starts it again on the same ports and data.
    pub fn restart_after(&mut self, down_for: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::thread::sleep(down_for);
        self.launch();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
