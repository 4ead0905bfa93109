//! Test harness: starts the real `quarry` binary as a separate process on free ports with
//! its own data directory, waits until its gateway reports SERVING, and stops it with
//! SIGTERM (or kills it) when the test ends.

#![allow(dead_code)]

pub mod etcd;
pub mod otlp;
pub mod prometheus;
pub mod redis;

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
    /// The CA a TLS gateway's certificate is checked against.
    pub ca: Option<PathBuf>,
}

/// How a `quarry up` is started beyond the defaults.
#[derive(Default)]
pub struct UpOptions<'a> {
    /// Extra flags (`--keys-file`, `--tls-cert`, ...).
    pub args: Vec<String>,
    /// Extra environment variables, set last.
    pub env: Vec<(&'a str, &'a str)>,
    /// Serve TLS: dial `https://localhost` trusting this CA.
    pub ca: Option<PathBuf>,
}

/// A channel to `address`; over TLS trusting `ca` when it is `https://`.
pub async fn dial(address: &str, ca: Option<&Path>) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = Channel::from_shared(address.to_string()).unwrap();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).expect("read the CA");
        endpoint = endpoint.tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )?;
    }
    endpoint.connect().await
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
        let options = UpOptions {
            env: env.to_vec(),
            ..UpOptions::default()
        };
        Self::start_with(data_dir, shards, options).await
    }

    /// Starts `quarry up` with extra flags and environment, over TLS when `options.ca` is set.
    pub async fn start_with(data_dir: &Path, shards: u32, options: UpOptions<'_>) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--shards", &shards.to_string()])
            .args(&options.args)
            .env("RUST_LOG", "warn")
            .env("QUARRY_ANALYZER__ENCODER", "onnx")
            .env("QUARRY_ANALYZER__MODEL_DIR", MODEL_DIR)
            .env("QUARRY_ANALYZER__RUNTIME_LIBRARY", RUNTIME_LIBRARY)
            .env_remove("QUARRY_CONFIG")
            .envs(options.env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start quarry up");
        let address = match options.ca {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let up = Self {
            child: Some(child),
            address,
            data_dir: data_dir.to_path_buf(),
            ca: options.ca,
        };
        up.wait_until_serving(Duration::from_secs(60)).await;
        up
    }

    async fn wait_until_serving(&self, patience: Duration) {
        let started = Instant::now();
        loop {
            if let Ok(channel) = dial(&self.address, self.ca.as_deref()).await {
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
        dial(&self.address, self.ca.as_deref())
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
        ..Document::default()
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

/// One `quarry serve <role>` process registered in etcd.
pub struct Served {
    child: Option<Child>,
    pub address: String,
    pub args: Vec<String>,
    /// Extra environment variables, set after the defaults.
    pub env: Vec<(String, String)>,
}

/// The model and ONNX Runtime's library, as `make model` installs them.
const MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/all-MiniLM-L6-v2");
const RUNTIME_LIBRARY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/onnxruntime/libonnxruntime.so"
);

/// Environment every test process gets: the model, and a short lease so that a dead member
/// leaves the member set quickly.
fn test_env(command: &mut Command) {
    command
        .env("RUST_LOG", "warn")
        .env("QUARRY_ANALYZER__MODEL_DIR", MODEL_DIR)
        .env("QUARRY_ANALYZER__RUNTIME_LIBRARY", RUNTIME_LIBRARY)
        .env("QUARRY_DISCOVERY__LEASE_TTL_S", "3")
        .env_remove("QUARRY_CONFIG");
}

impl Served {
    /// Starts `quarry serve <role> --listen 127.0.0.1:<free> <extra...>` and waits for SERVING.
    pub async fn start(role: &str, extra: &[String]) -> Self {
        Self::start_with_env(role, extra, &[]).await
    }

    /// Like [`Served::start`], with extra environment variables (`OTEL_*`, ...).
    pub async fn start_with_env(role: &str, extra: &[String], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut args = vec![
            "serve".to_string(),
            role.to_string(),
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().cloned());
        let mut served = Self {
            child: None,
            address: format!("http://127.0.0.1:{port}"),
            args,
            env: env
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        };
        served.launch().await;
        served
    }

    async fn launch(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quarry"));
        command
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        test_env(&mut command);
        command.envs(self.env.iter().map(|(name, value)| (name, value)));
        self.child = Some(command.spawn().expect("start quarry serve"));
        wait_for_health(&self.address, "", Duration::from_secs(60)).await;
    }

    /// Starts the process again with the same arguments (same port and data).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.launch().await;
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("running");
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal}");
    }

    /// SIGTERM, and wait for the process to finish.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the server at `address` reports SERVING for `service` ("" for the server).
pub async fn wait_for_health(address: &str, service: &str, patience: Duration) {
    let started = Instant::now();
    loop {
        if let Ok(channel) = Channel::from_shared(address.to_string())
            .unwrap()
            .connect()
            .await
        {
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await;
            if matches!(reply, Ok(ref reply) if reply.get_ref().status == ServingStatus::Serving as i32)
            {
                return;
            }
        }
        assert!(
            started.elapsed() < patience,
            "{address} did not serve in {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `quarry <args>` to completion and returns its stdout, failing on a non-zero exit.
pub fn quarry_command(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(args)
        .output()
        .expect("run quarry");
    assert!(
        output.status.success(),
        "quarry {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}
