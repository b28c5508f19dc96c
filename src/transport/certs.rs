//! Where a `tls:` listener's certificate comes from: PEM files (`--tls-cert`, `--tls-key`,
//! re-read on SIGHUP), or, without them, a self-signed one made at start-up (rcgen) so that
//! `--listen tls:localhost:50443` just works.
//!
//! A new certificate applies to new handshakes only; open connections keep the session
//! they have. A file that fails to load at start-up is an error; on SIGHUP it is an error
//! line, and the last good certificate stays.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{info, warn};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The TLS settings every `tls:` listener shares, and where they came from.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The `--tls-cert` and `--tls-key` files, or `None` for a self-signed certificate.
    files: Option<(PathBuf, PathBuf)>,
    /// What new handshakes use.
    config: Arc<ServerConfig>,
}

impl TlsIdentity {
    /// From the files if given, else a self-signed certificate for `localhost`, the
    /// loopback addresses and `hosts` (the listeners' host names), announced by one
    /// warning with its SHA-256 fingerprint.
    pub fn new(files: Option<(PathBuf, PathBuf)>, hosts: &[String]) -> io::Result<TlsIdentity> {
        let config = match &files {
            Some((cert, key)) => {
                let config = from_files(cert, key)?;
                info!("tls: certificate from {}", cert.display());
                config
            }
            None => self_signed(hosts)?,
        };
        Ok(TlsIdentity { files, config })
    }

    /// The configuration new handshakes use.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// SIGHUP: read the files again. A failure keeps the last good certificate.
    pub(crate) fn reload(&mut self) {
        let Some((cert, key)) = &self.files else {
            info!("tls: SIGHUP: the certificate is self-signed, nothing to re-read");
            return;
        };
        match from_files(cert, key) {
            Ok(config) => {
                self.config = config;
                info!("tls: SIGHUP: certificate re-read from {}", cert.display());
            }
            Err(err) => warn!("tls: SIGHUP: {err}; keeping the certificate already loaded"),
        }
    }
}

/// A rustls server configuration: TLS 1.3 and 1.2, the `ring` provider, no client auth.
fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A certificate chain and its key from PEM files.
fn from_files(cert: &Path, key: &Path) -> io::Result<Arc<ServerConfig>> {
    let bad = |what: &Path, err: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot load {}: {err}", what.display()),
        )
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| bad(cert, &err))?;
    if chain.is_empty() {
        return Err(bad(cert, &"no certificate in it"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|err| bad(key, &err))?;
    server_config(chain, private).map_err(|err| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} and {} do not make a usable certificate: {err}",
                cert.display(),
                key.display()
            ),
        )
    })
}

/// An ephemeral self-signed certificate, announced with its fingerprint.
fn self_signed(hosts: &[String]) -> io::Result<Arc<ServerConfig>> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    for host in hosts {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !host.is_empty() && !names.iter().any(|name| name == host) {
            names.push(host.to_string());
        }
    }
    let made = rcgen::generate_simple_self_signed(names.clone()).map_err(io::Error::other)?;
    let der = made.cert.der().clone();
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let mut fingerprint = String::new();
    for (i, byte) in digest.as_ref().iter().enumerate() {
        let _ = write!(fingerprint, "{}{byte:02X}", if i > 0 { ":" } else { "" });
    }
    warn!(
        "tls: no --tls-cert given: serving an ephemeral self-signed certificate for {} \
         (SHA-256 {fingerprint}); clients must skip verification or pin it",
        names.join(", ")
    );
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    server_config(vec![der], key).map_err(io::Error::other)
}
