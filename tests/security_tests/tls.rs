//! TLS on the public API: trusted clients only, a swapped certificate reloaded, probes on
//! their own port; and a gateway on every interface needs TLS, keys or `--insecure`.

use super::*;

/// A CA and a server certificate for localhost and 127.0.0.1 it signed, as PEM files.
struct Pki {
    ca: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(directory: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca = directory.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, issuer.pem()).unwrap();
        Self { ca, issuer }
    }

    /// Writes a server certificate and key over `cert` and `key` (each renamed into place).
    fn issue(&self, cert: &Path, key: &Path) {
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let key_pair = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key_pair, &self.issuer).unwrap();
        for (path, text) in [(key, key_pair.serialize_pem()), (cert, certificate.pem())] {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, text).unwrap();
            std::fs::rename(&partial, path).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_trusting_clients_only_and_reloads_a_swapped_certificate() {
    let directory = tempfile::tempdir().unwrap();
    let (first, second) = (
        Pki::new(directory.path(), "first"),
        Pki::new(directory.path(), "second"),
    );
    let (cert, key) = (
        directory.path().join("cert.pem"),
        directory.path().join("key.pem"),
    );
    first.issue(&cert, &key);
    let health_port = free_port();
    let options = UpOptions {
        args: vec![
            "--tls-cert".into(),
            cert.to_str().unwrap().into(),
            "--tls-key".into(),
            key.to_str().unwrap().into(),
            "--health-listen".into(),
            format!("127.0.0.1:{health_port}"),
        ],
        env: vec![FAST_ENCODER],
        ca: Some(first.ca.clone()),
    };
    let quarry = QuarryUp::start_with(&directory.path().join("data"), 1, options).await;
    let port = quarry.address.rsplit(':').next().unwrap().to_string();

    // The CLI over https://, trusting the right CA.
    let output = quarry_command(&[
        "search",
        "anything",
        "--addr",
        &quarry.address,
        "--tls-ca",
        first.ca.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.contains("hits"), "{output}");

    // Plaintext, and TLS trusting another CA, get nowhere.
    let plaintext = async {
        let channel = dial(&format!("http://127.0.0.1:{port}"), None).await?;
        Ok::<_, Box<dyn std::error::Error>>(
            QuarryClient::new(channel)
                .search(search_request("x"))
                .await?,
        )
    };
    assert!(plaintext.await.is_err(), "a plaintext client was served");
    assert!(
        dial(&quarry.address, Some(&second.ca)).await.is_err(),
        "a client trusting another CA was served"
    );

    // Kubernetes' probes (plaintext gRPC) get health, and only health, on their own port.
    support::wait_for_health(
        &format!("http://127.0.0.1:{health_port}"),
        "quarry.v1.Quarry",
        Duration::from_secs(5),
    )
    .await;
    let probe_channel = dial(&format!("http://127.0.0.1:{health_port}"), None)
        .await
        .unwrap();
    let unimplemented = QuarryClient::new(probe_channel)
        .search(search_request("x"))
        .await
        .unwrap_err();
    assert_eq!(
        unimplemented.code(),
        Code::Unimplemented,
        "the probe port serves the API"
    );

    // A certificate swapped on disk is served to new connections within 2 s.
    second.issue(&cert, &key);
    let took = within(Duration::from_secs(2), || async {
        match dial(&quarry.address, Some(&second.ca)).await {
            Ok(channel) => QuarryClient::new(channel)
                .search(search_request("x"))
                .await
                .is_ok(),
            Err(_) => false,
        }
    })
    .await;
    eprintln!("the new certificate was served after {took:?}");
    assert!(
        dial(&quarry.address, Some(&first.ca)).await.is_err(),
        "the old certificate is still served"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_on_every_interface_needs_tls_keys_or_insecure() {
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let up = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quarry"));
        command
            .args([
                "up",
                "--listen",
                &format!("0.0.0.0:{port}"),
                "--shards",
                "1",
                "--data-dir",
            ])
            .arg(directory.path())
            .args(extra)
            .env("QUARRY_ANALYZER__ENCODER", "hash")
            .env("RUST_LOG", "error")
            .env_remove("QUARRY_CONFIG");
        command
    };
    let refused = up(&[]).output().unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("--insecure") && !said.contains("--advertise"),
        "{said}"
    );

    let mut open = up(&["--insecure"]).spawn().unwrap();
    support::wait_for_health(
        &format!("http://127.0.0.1:{port}"),
        "quarry.v1.Quarry",
        Duration::from_secs(60),
    )
    .await;
    let channel = dial(&format!("http://127.0.0.1:{port}"), None)
        .await
        .unwrap();
    let searched = QuarryClient::new(channel)
        .search(search_request("anything"))
        .await;
    let _ = open.kill();
    let _ = open.wait();
    assert!(searched.is_ok(), "{searched:?}");
}
