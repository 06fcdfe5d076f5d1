//! How a test reaches a collector: its URL, the CA that signed its
//! certificate, and an operator token. The harness's collectors serve
//! mutual TLS with a throwaway CA, as a deployment does.

use std::fmt;
use std::path::PathBuf;

use anyhow::Context as _;
use tonic::transport::{Channel, Endpoint};

/// Everything a client needs to talk to one collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorAccess {
    pub url: String,
    /// The CA to check the collector against; `None`: plaintext.
    pub ca: Option<PathBuf>,
    /// A client certificate and key (a sensor's), if the caller has one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Sent as `authorization: Bearer <token>` by [`CollectorAccess::request`].
    pub token: Option<String>,
}

impl fmt::Display for CollectorAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl CollectorAccess {
    /// A plaintext loopback collector (the collector crate's in-process ones).
    pub fn plaintext(url: impl Into<String>, token: Option<String>) -> Self {
        Self {
            url: url.into(),
            ca: None,
            identity: None,
            token,
        }
    }

    /// The same collector with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Self {
        Self {
            token: token.map(str::to_owned),
            ..self.clone()
        }
    }

    /// The same collector as a holder of this client certificate.
    pub fn with_identity(&self, cert: PathBuf, key: PathBuf) -> Self {
        Self {
            identity: Some((cert, key)),
            ..self.clone()
        }
    }

    /// A connected channel (TLS checked against `ca` when set).
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let mut endpoint = Endpoint::from_shared(self.url.clone())?;
        if let Some(ca) = &self.ca {
            let files = pki::tls::ClientFiles {
                ca: ca.clone(),
                identity: self.identity.clone(),
                server_name: None,
            };
            endpoint = endpoint.tls_config(files.client_config()?)?;
        }
        endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to the collector at {}", self.url))
    }

    /// `message` with the token, if any.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}
