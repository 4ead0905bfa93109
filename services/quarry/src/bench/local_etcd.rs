//! A throwaway etcd for benchmarks: the `etcd` binary on free loopback ports with its own
//! temporary data directory, killed when dropped.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

pub struct LocalEtcd {
    child: Child,
    pub endpoint: String,
    _data: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl LocalEtcd {
    pub fn start() -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .arg("--name=quarry-bench")
            .arg(format!("--data-dir={}", data.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=quarry-bench={peer}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd (install etcd-server, or pass --etcd)")?;
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", client_port)).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                anyhow::bail!("etcd did not start within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            endpoint: client,
            _data: data,
        })
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
