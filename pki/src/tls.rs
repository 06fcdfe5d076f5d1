//! tonic TLS settings from the PKI's files, and the one rule for plaintext:
//! only on loopback, only when asked for.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls::{
    self, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::{PkiError, files};

/// A handshake that takes longer is dropped (a slow-loris client holds
/// nothing for long).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The collector's certificate, key and the CA its clients must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl ServerFiles {
    /// TLS 1.2+ (rustls, ring), HTTP/2. Client certificates are checked
    /// against the CA when presented; they are optional at the handshake
    /// because analysts authenticate with tokens, and every sensor RPC
    /// refuses a caller without a sensor certificate. A rustls config
    /// rather than tonic's fixed settings, for a listener that swaps it
    /// while it runs (a renewed collector certificate or CA without a
    /// restart).
    pub fn rustls_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        let cert_pem = files::read_public(&self.cert)?;
        let key_pem = files::read_secret(&self.key)?;
        let ca_pem = files::read_public(&self.client_ca)?;
        let invalid = |path: &Path| {
            let path = path.to_owned();
            move |why: String| PkiError::Invalid { path, why }
        };
        let certs = pem_certs(&self.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| invalid(&self.key)(format!("no private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for ca in pem_certs(&self.client_ca, &ca_pem)? {
            roots
                .add(ca)
                .map_err(|e| invalid(&self.client_ca)(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| invalid(&self.client_ca)(e.to_string()))?;
        // Refuses a key that is not the certificate's (a half-copied renewal).
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Certificate(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| invalid(&self.key)(format!("with {}: {e}", self.cert.display())))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Every certificate of a PEM file, at least one.
fn pem_certs(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Invalid {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Invalid {
            path: path.to_owned(),
            why: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// What a client (sensor, CLI) needs to check the collector and, for a
/// sensor, to prove who it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientFiles {
    pub ca: PathBuf,
    /// Client certificate and key: sensors have one, analysts do not.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the collector's certificate must carry; default: the host
    /// of the URL.
    pub server_name: Option<String>,
}

impl ClientFiles {
    /// Read at every (re)connection, so renewed files are used from the
    /// next connection on.
    pub fn client_config(&self) -> Result<ClientTlsConfig, PkiError> {
        let ca = files::read_public(&self.ca)?;
        check_pem(&self.ca, &ca)?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some((cert_path, key_path)) = &self.identity {
            let cert = files::read_public(cert_path)?;
            check_pem(cert_path, &cert)?;
            let key = files::read_secret(key_path)?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }
}

fn check_pem(path: &Path, text: &str) -> Result<(), PkiError> {
    if text.contains("-----BEGIN CERTIFICATE-----") {
        Ok(())
    } else {
        Err(PkiError::Invalid {
            path: path.to_owned(),
            why: "no PEM certificate in it".into(),
        })
    }
}

/// The host part of an `http://` or `https://` URL (brackets removed).
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next();
    }
    authority.split(':').next().filter(|h| !h.is_empty())
}

/// Plaintext is allowed only to and from loopback: `127.0.0.0/8`, `::1`
/// or `localhost`.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a plaintext URL whose host is not loopback.
pub fn check_plaintext_url(url: &str) -> Result<(), PkiError> {
    match url_host(url) {
        Some(host) if is_loopback_host(host) => Ok(()),
        _ => Err(PkiError::PlaintextOffLoopback(url.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:50051",
            "http://127.3.2.1:1",
            "http://[::1]:5",
            "http://localhost:9",
        ] {
            assert!(check_plaintext_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:50051",
            "http://[::ffff:10.0.0.1]:1",
            "http://collector.example:1",
            "http://127.0.0.1.evil.example:1",
            "http://",
        ] {
            assert!(check_plaintext_url(bad).is_err(), "{bad}");
        }
    }
}
