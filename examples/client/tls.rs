//! `--tls`: the same conversation inside a TLS session (rustls, blocking).
//!
//! A client must decide whom it trusts: `--ca FILE` trusts the certificate(s) in a PEM
//! file (echod's `--tls-cert`, or a CA that signed it); `--insecure` trusts anyone, which
//! is what talking to echod's ephemeral self-signed certificate takes (its fingerprint is
//! in echod's log, to compare by eye). The load generator shares this file (`#[path]`).

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};

/// A TLS session over `socket` with `host`, trusting `ca` (or anyone, if `insecure`).
#[allow(dead_code)] // the load generator, which shares this file, drives sessions itself
pub fn wrap(
    socket: TcpStream,
    host: &str,
    ca: Option<&Path>,
    insecure: bool,
) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
    let config = client_config(ca, insecure)?;
    let session = ClientConnection::new(config, server_name(host)?).map_err(|e| e.to_string())?;
    Ok(StreamOwned::new(session, socket))
}

/// The name a certificate must carry: a host name, or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
        .map(|name| name.to_owned())
        .map_err(|err| format!("{host}: {err}"))
}

/// Whom a client trusts: the certificates in `ca`, or (`insecure`) anyone.
pub fn client_config(ca: Option<&Path>, insecure: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?;
    let config = match (ca, insecure) {
        (Some(ca), _) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|err| format!("cannot read {}: {err}", ca.display()))?
            {
                let cert = cert.map_err(|err| format!("cannot read {}: {err}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|err| format!("{}: {err}", ca.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (None, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustAnyone(provider)))
            .with_no_client_auth(),
        (None, false) => {
            return Err("--tls needs --ca FILE (the server's certificate) or --insecure".into());
        }
    };
    Ok(Arc::new(config))
}

/// `--insecure`: any certificate is accepted; signatures are still checked, so the peer
/// must at least hold the key of the certificate it shows.
#[derive(Debug)]
struct TrustAnyone(Arc<CryptoProvider>);

impl ServerCertVerifier for TrustAnyone {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
