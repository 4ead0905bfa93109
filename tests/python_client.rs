//! A Python client generated from proto/ with grpcio-tools calls Health, Ingest, Search and
//! Ask on `quarry up` (the README's example; `make test` installs grpcio into .venv).

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::QuarryUp;

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

#[tokio::test(flavor = "multi_thread")]
async fn python_grpcio_client_calls_health_ingest_search_and_ask() {
    let data_dir = tempfile::tempdir().unwrap();
    let quarry = QuarryUp::start(data_dir.path(), 2).await;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/quarry_client.py");
    let output = Command::new(python())
        .arg(&script)
        .args(["--addr", quarry.address.trim_start_matches("http://")])
        .output()
        .expect("run python (make test installs grpcio into .venv; or set QUARRY_PYTHON)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("python client: ok"), "{stdout}");
    assert!(stdout.contains("py-llama"), "{stdout}");
}
