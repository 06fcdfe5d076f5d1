//! How the sensor reaches the collector: mutual TLS with the files of
//! `[collector]`, or plaintext to a loopback address when the config says
//! so explicitly. The uploader and the control stream both connect through
//! here, and read the TLS files at every connection, so renewed
//! certificates are used from the next reconnection on.

use std::time::Duration;

use pki::tls::ClientFiles;
use tonic::transport::Endpoint;

use crate::config::CollectorConfig;

/// Why the collector cannot be reached as configured.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("collector.endpoint {endpoint:?} is not usable: {source}")]
    Endpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

/// The collector's address and how to prove both ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorLink {
    pub endpoint: String,
    /// `None`: plaintext (loopback only).
    pub tls: Option<ClientFiles>,
    pub connect_timeout: Duration,
}

impl CollectorLink {
    pub fn from_config(c: &CollectorConfig) -> Self {
        let tls = (!c.insecure_plaintext).then(|| ClientFiles {
            ca: c.ca_file.clone(),
            identity: Some((c.cert_file.clone(), c.key_file.clone())),
            server_name: c.server_name.clone(),
        });
        Self {
            endpoint: c.endpoint.clone(),
            tls,
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
        }
    }

    /// Plaintext to a loopback URL (tests, local development).
    pub fn plaintext(endpoint: impl Into<String>, connect_timeout: Duration) -> Self {
        Self {
            endpoint: endpoint.into(),
            tls: None,
            connect_timeout,
        }
    }

    /// Checks the URL alone (and the loopback rule for plaintext), without
    /// reading any file.
    pub fn check_url(&self) -> Result<(), LinkError> {
        Endpoint::from_shared(self.endpoint.clone()).map_err(|source| LinkError::Endpoint {
            endpoint: self.endpoint.clone(),
            source,
        })?;
        if self.tls.is_none() {
            pki::tls::check_plaintext_url(&self.endpoint)?;
        }
        Ok(())
    }

    /// A fresh endpoint: TLS files are read now.
    pub fn endpoint(&self) -> Result<Endpoint, LinkError> {
        let bad = |source| LinkError::Endpoint {
            endpoint: self.endpoint.clone(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(bad)?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // Notice a vanished collector (cable pulled) without waiting
            // for TCP to give up.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        match &self.tls {
            Some(files) => {
                endpoint = endpoint.tls_config(files.client_config()?).map_err(bad)?;
            }
            None => pki::tls::check_plaintext_url(&self.endpoint)?,
        }
        Ok(endpoint)
    }
}

/// An error and its causes on one line: tonic's "transport error" alone
/// hides why (an unknown issuer, an expired certificate, a refused port).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
