//! Test harness: starts the real `quarry` binary as a separate process on free ports with
//! its own data directory, waits until its gateway reports SERVING, and stops it with
//! SIGTERM (or kills it) when the test ends.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::Document;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A `quarry up` process.
pub struct QuarryUp {
    child: Option<Child>,
    pub address: String,
    pub data_dir: PathBuf,
}

/// A free loopback port (the OS picks it; the listener is closed right away).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl QuarryUp {
    /// Starts `quarry up` with `shards` shards on a free port and waits until it serves.
    pub async fn start(data_dir: &Path, shards: u32) -> Self {
        Self::start_with_env(data_dir, shards, &[]).await
    }

    /// Starts `quarry up` like [`QuarryUp::start`] with extra environment variables, set
    /// last so they override the defaults above (`QUARRY_GENERATOR__BACKEND=openai`, ...).
    pub async fn start_with_env(data_dir: &Path, shards: u32, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--shards", &shards.to_string()])
            .env("RUST_LOG", "warn")
            .env("QUARRY_ANALYZER__ENCODER", "minilm")
            .env(
                "QUARRY_ANALYZER__MODEL_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/all-MiniLM-L6-v2"),
            )
            .env_remove("QUARRY_CONFIG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start quarry up");
        let up = Self {
            child: Some(child),
            address: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
        };
        up.wait_until_serving(Duration::from_secs(60)).await;
        up
    }

    async fn wait_until_serving(&self, patience: Duration) {
        let started = Instant::now();
        loop {
            if let Ok(channel) = Channel::from_shared(self.address.clone())
                .unwrap()
                .connect()
                .await
            {
                let reply = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: "quarry.v1.Quarry".to_string(),
                    })
                    .await;
                if let Ok(reply) = reply {
                    if reply.into_inner().status == ServingStatus::Serving as i32 {
                        return;
                    }
                }
            }
            assert!(
                started.elapsed() < patience,
                "quarry up did not start serving in {patience:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.address.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect to the gateway")
    }

    pub async fn client(&self) -> QuarryClient<Channel> {
        QuarryClient::new(self.channel().await)
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL quarry");
        child.wait().expect("reap quarry");
    }

    /// Sends SIGTERM and waits for a graceful exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let terminated = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(terminated.success());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait for quarry") {
                return status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("quarry did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for QuarryUp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn document(id: &str, title: &str, text: &str) -> Document {
    Document {
        id: id.to_string(),
        title: title.to_string(),
        text: text.to_string(),
        metadata: Default::default(),
    }
}

/// A small corpus with one clearly right document for each test question.
pub fn corpus() -> Vec<Document> {
    vec![
        document("insulin", "Insulin", "Insulin is a hormone made by the pancreas. Insulin lowers blood glucose by helping muscle and fat cells absorb sugar from the blood."),
        document("photosynthesis", "Photosynthesis", "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make glucose and release oxygen."),
        document("volcano", "Volcanoes", "A volcano is a rupture in the crust of a planet where lava, ash and gases escape from a magma chamber below the surface."),
        document("tides", "Ocean tides", "Tides are the rise and fall of sea levels caused by the gravitational pull of the Moon and the Sun on the oceans."),
        document("rust-ownership", "Rust ownership", "In Rust every value has a single owner. When the owner goes out of scope the value is dropped, which frees memory without a garbage collector."),
        document("sourdough", "Sourdough bread", "Sourdough bread is leavened by a starter of wild yeast and lactic acid bacteria, which gives the loaf its sour taste."),
        document("jupiter", "Jupiter", "Jupiter is the largest planet in the Solar System. It is a gas giant with at least 95 known moons, including Ganymede, the largest moon."),
        document("penicillin", "Penicillin", "Penicillin was discovered by Alexander Fleming in 1928 when he noticed mould killing bacteria in a culture dish."),
    ]
}
