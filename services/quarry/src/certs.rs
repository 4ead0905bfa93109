//! `quarry certs ca|issue`: a CA for a cluster and the certificates its members present —
//! each naming its roles as `<role>.<cluster>.quarry`, what mutual TLS between the roles
//! checks — and certificates for the gateway's public names. The Helm chart makes the same
//! ones itself; this is for everything else (a laptop, systemd, tests).

use std::path::Path;

use anyhow::Context;
use quarry_kit::discovery::Role;
use quarry_kit::mtls::identity_name;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use crate::cli::{CertsCaArgs, CertsCommand, CertsIssueArgs};

pub fn run(command: &CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Ca(args) => ca(args),
        CertsCommand::Issue(args) => issue(args),
    }
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back: clocks of the machines that check it may lag this one's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Writes `text` to `path`, readable by its owner only when it is a key.
fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn ca(args: &CertsCaArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, args.name.clone());
    validity(&mut params, args.days);
    let key = KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    write(&args.out.join("ca.pem"), &certificate.pem(), false)?;
    write(&args.out.join("ca-key.pem"), &key.serialize_pem(), true)?;
    println!("wrote {}", args.out.join("ca.pem").display());
    Ok(())
}

fn issue(args: &CertsIssueArgs) -> anyhow::Result<()> {
    let ca_pem = std::fs::read_to_string(args.ca.join("ca.pem"))
        .with_context(|| format!("reading {}", args.ca.join("ca.pem").display()))?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(args.ca.join("ca-key.pem"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let mut names = Vec::new();
    for role in &args.roles {
        if role == "all" {
            names.extend(
                Role::ALL
                    .iter()
                    .map(|role| identity_name(*role, &args.cluster)),
            );
            continue;
        }
        let role = Role::ALL
            .iter()
            .find(|known| known.as_str() == role)
            .with_context(|| format!("--roles: {role:?} is not a role"))?;
        names.push(identity_name(*role, &args.cluster));
    }
    names.extend(args.san.iter().cloned());
    anyhow::ensure!(
        !names.is_empty(),
        "give --roles or --san: the certificate must name something"
    );
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, args.name.clone());
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, args.days);
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(&args.out)?;
    let cert_path = args.out.join(format!("{}.pem", args.name));
    write(&cert_path, &certificate.pem(), false)?;
    write(
        &args.out.join(format!("{}-key.pem", args.name)),
        &key.serialize_pem(),
        true,
    )?;
    println!("wrote {}", cert_path.display());
    Ok(())
}
