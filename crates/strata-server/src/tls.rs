//! Certificates for trying TLS without a PKI: a private certificate authority and a
//! server certificate it signs, as `strata tls self-signed` writes them.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The files [`write_self_signed`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The authority's certificate: what clients trust (`--tls-ca`).
    pub ca: PathBuf,
    /// The server's certificate chain (`--tls-cert`).
    pub cert: PathBuf,
    /// The server's private key (`--tls-key`).
    pub key: PathBuf,
}

/// Writes `ca.pem`, `server.pem` and `server.key` (ECDSA P-256) into `dir`, the server
/// certificate valid for `hosts` (names or IP addresses).
pub fn write_self_signed(dir: &Path, hosts: &[String]) -> Result<TlsFiles> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let bad = |e: rcgen::Error| Error::Config(format!("making a certificate: {e}"));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Strata local CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(bad)?).map_err(bad)?;
    let key = KeyPair::generate().map_err(bad)?;
    let cert = CertificateParams::new(hosts.to_vec())
        .map_err(bad)?
        .signed_by(&key, &ca)
        .map_err(bad)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    let write = |path: &Path, text: String| {
        std::fs::write(path, text)
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))
    };
    write(&files.ca, ca.pem())?;
    write(&files.cert, cert.pem())?;
    write(&files.key, key.serialize_pem())?;
    Ok(files)
}
