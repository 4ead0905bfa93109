//! etcd over TLS with client certificates and with authentication on; keys kept there.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn keys_kept_in_etcd_over_tls_take_effect_without_a_restart() {
    let directory = tempfile::tempdir().unwrap();
    let ca = make_ca(directory.path(), "ca");
    let certs = directory.path().join("certs");
    quarry_command(&[
        "certs",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--out",
        certs.to_str().unwrap(),
        "--name",
        "etcd",
        "--san",
        "127.0.0.1,localhost",
    ]);
    quarry_command(&[
        "certs",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--out",
        certs.to_str().unwrap(),
        "--name",
        "client",
        "--san",
        "quarry-client",
    ]);
    let etcd = support::etcd::Etcd::start_tls(
        ca.join("ca.pem"),
        certs.join("etcd.pem"),
        certs.join("etcd-key.pem"),
    );
    let ca_pem = ca.join("ca.pem");
    let (client_cert, client_key) = (certs.join("client.pem"), certs.join("client-key.pem"));
    let etcd_tls = [
        ("QUARRY_DISCOVERY__ETCD_CA", ca_pem.to_str().unwrap()),
        ("QUARRY_DISCOVERY__ETCD_CERT", client_cert.to_str().unwrap()),
        ("QUARRY_DISCOVERY__ETCD_KEY", client_key.to_str().unwrap()),
    ];
    let quarry = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(args)
            .envs(etcd_tls)
            .env_remove("QUARRY_CONFIG")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "quarry {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    // Without the client certificate etcd refuses; with it the cluster is created.
    let refused = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args([
            "cluster",
            "create",
            "--etcd",
            &etcd.endpoint,
            "--shards",
            "1",
        ])
        .env("QUARRY_DISCOVERY__ETCD_CA", &ca_pem)
        .env_remove("QUARRY_CONFIG")
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "etcd took a client without a certificate"
    );
    quarry(&[
        "cluster",
        "create",
        "--etcd",
        &etcd.endpoint,
        "--shards",
        "1",
    ]);
    let first = quarry(&[
        "keys",
        "create",
        "--etcd",
        &etcd.endpoint,
        "--scopes",
        "read",
    ]);

    let mut env: Vec<(&str, &str)> = etcd_tls.to_vec();
    env.extend([FAST_ENCODER, ("QUARRY_AUTH__ETCD_KEYS", "true")]);
    let etcd_args = vec!["--etcd".to_string(), etcd.endpoint.clone()];
    let data = directory.path().join("shard");
    let mut retriever_args = etcd_args.clone();
    retriever_args.extend([
        "--data-dir".to_string(),
        data.to_str().unwrap().to_string(),
        "--shard".into(),
        "0".into(),
    ]);
    let _analyzer = support::Served::start_with_env("analyzer", &etcd_args, &env).await;
    let _retriever = support::Served::start_with_env("retriever", &retriever_args, &env).await;
    let gateway = support::Served::start_with_env("gateway", &etcd_args, &env).await;
    let mut client = QuarryClient::new(dial(&gateway.address, None).await.unwrap());

    let searched = within(Duration::from_secs(10), || {
        let (mut client, first) = (client.clone(), first.clone());
        async move { call(&mut client, "Search", Some(&first)).await == Code::Ok }
    })
    .await;
    eprintln!("searched with a key from etcd after {searched:?}");
    assert_eq!(
        call(&mut client, "Search", None).await,
        Code::Unauthenticated
    );

    let second = quarry(&[
        "keys",
        "create",
        "--etcd",
        &etcd.endpoint,
        "--scopes",
        "read",
    ]);
    let took = within(Duration::from_secs(2), || {
        let (mut client, second) = (client.clone(), second.clone());
        async move { call(&mut client, "Search", Some(&second)).await == Code::Ok }
    })
    .await;
    eprintln!("a key added in etcd took effect in {took:?}");
    quarry(&["keys", "revoke", key_id(&first), "--etcd", &etcd.endpoint]);
    let took = within(Duration::from_secs(2), || {
        let (mut client, first) = (client.clone(), first.clone());
        async move { call(&mut client, "Search", Some(&first)).await == Code::Unauthenticated }
    })
    .await;
    eprintln!("a key revoked in etcd took effect in {took:?}");
    assert_eq!(call(&mut client, "Search", Some(&second)).await, Code::Ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn members_and_the_cli_reach_an_etcd_with_authentication_as_a_user() {
    let etcd = support::etcd::Etcd::start();
    let mut admin = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    admin.user_add("root", "root-password", None).await.unwrap();
    let _ = admin.role_add("root").await;
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let run = |args: &[&str], user: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quarry"));
        command.args(args).env_remove("QUARRY_CONFIG");
        if user {
            command
                .env("QUARRY_DISCOVERY__ETCD_USER", "root")
                .env("QUARRY_DISCOVERY__ETCD_PASSWORD", "root-password");
        }
        command.output().unwrap()
    };
    let create = [
        "cluster",
        "create",
        "--etcd",
        etcd.endpoint.as_str(),
        "--shards",
        "1",
    ];
    assert!(
        !run(&create, false).status.success(),
        "etcd took a call without its user"
    );
    let created = run(&create, true);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = run(
        &[
            "keys",
            "create",
            "--etcd",
            &etcd.endpoint,
            "--scopes",
            "read",
        ],
        true,
    );
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );

    // A member registers itself (lease, keep-alive, watch) as that user.
    let env = [
        FAST_ENCODER,
        ("QUARRY_DISCOVERY__ETCD_USER", "root"),
        ("QUARRY_DISCOVERY__ETCD_PASSWORD", "root-password"),
    ];
    let args = vec!["--etcd".to_string(), etcd.endpoint.clone()];
    let analyzer = support::Served::start_with_env("analyzer", &args, &env).await;
    let gateway = support::Served::start_with_env("gateway", &args, &env).await;
    let status = QuarryClient::new(dial(&gateway.address, None).await.unwrap())
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        status
            .members
            .iter()
            .any(|member| member.address == analyzer.address),
        "{status:?}"
    );
}
