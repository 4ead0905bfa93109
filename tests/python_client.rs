//! A Python client generated from proto/ with grpcio-tools calls Health, Ingest, Search and
//! Ask on `quarry up` (the README's example; `make test` installs grpcio into .venv), in
//! plaintext and over TLS with an API key.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{quarry_command, QuarryUp, UpOptions};

/// The interpreter with grpcio: $QUARRY_PYTHON, else the repo's .venv, else python3.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("QUARRY_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Runs tests/python/quarry_client.py with `args`; fails unless it says it is ok, and
/// returns what it printed.
fn run_client(args: &[&str]) -> String {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/quarry_client.py");
    let output = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("run python (make test installs grpcio into .venv; or set QUARRY_PYTHON)");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("python client: ok"), "{stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn python_grpcio_client_calls_health_ingest_search_and_ask() {
    let data_dir = tempfile::tempdir().unwrap();
    let quarry = QuarryUp::start(data_dir.path(), 2).await;
    let stdout = run_client(&["--addr", quarry.address.trim_start_matches("http://")]);
    assert!(stdout.contains("py-llama"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_grpcio_client_works_over_tls_with_an_api_key() {
    let directory = tempfile::tempdir().unwrap();
    let path = |name: &str| directory.path().join(name).to_str().unwrap().to_string();
    quarry_command(&["certs", "ca", "--out", &path("ca")]);
    quarry_command(&[
        "certs",
        "issue",
        "--ca",
        &path("ca"),
        "--out",
        &path("certs"),
        "--name",
        "gateway",
        "--san",
        "localhost",
    ]);
    let keys = path("keys.jsonl");
    let key = quarry_command(&["keys", "create", "--file", &keys, "--scopes", "read,write"]);
    let options = UpOptions {
        args: vec![
            "--tls-cert".into(),
            path("certs/gateway.pem"),
            "--tls-key".into(),
            path("certs/gateway-key.pem"),
            "--keys-file".into(),
            keys,
        ],
        env: vec![("QUARRY_ANALYZER__ENCODER", "hash")],
        ca: Some(directory.path().join("ca/ca.pem")),
    };
    let quarry = QuarryUp::start_with(&directory.path().join("data"), 2, options).await;
    run_client(&[
        "--addr",
        quarry.address.trim_start_matches("https://"),
        "--ca",
        &path("ca/ca.pem"),
        "--api-key",
        key.trim(),
    ]);
}
