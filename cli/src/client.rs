//! Connecting to a collector, shared by every subcommand that talks to one:
//! TLS checked against the deployment's CA, and the operator's token.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tonic::transport::{Channel, Endpoint};

/// Where `--collector` points when not given.
pub const DEFAULT_COLLECTOR: &str = "https://127.0.0.1:50051";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the collector is, how to check it, and who is asking.
#[derive(Debug, Args, Clone)]
pub struct Access {
    /// Collector gRPC address, `https://host:port` or `host:port`.
    #[arg(long, default_value = DEFAULT_COLLECTOR)]
    pub collector: String,
    /// The CA the collector's certificate must chain to; else $RXSENTRY_CA,
    /// else the collector host's own (STATE_DIR/pki/ca.pem).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The name the collector's certificate must carry, when the address
    /// is not it.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Plaintext to a loopback collector started with --insecure-plaintext.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// File holding the operator token (mode 0600); else
    /// $RXSENTRY_TOKEN_FILE, else $RXSENTRY_TOKEN.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

impl Access {
    /// The collector's URL with a scheme.
    pub fn url(&self) -> String {
        normalize_url(&self.collector, self.insecure_plaintext)
    }

    pub fn token(&self) -> anyhow::Result<String> {
        let file = self
            .token_file
            .clone()
            .or_else(|| std::env::var_os("RXSENTRY_TOKEN_FILE").map(PathBuf::from));
        let token = match file {
            // A token file others can read is a leaked token: refused.
            Some(path) => pki::files::read_secret(&path)
                .with_context(|| format!("cannot use the token file {}", path.display()))?,
            None => std::env::var("RXSENTRY_TOKEN").unwrap_or_default(),
        };
        let token = token.trim().to_owned();
        if token.is_empty() {
            bail!(
                "no operator token: give --token-file PATH or set RXSENTRY_TOKEN_FILE or RXSENTRY_TOKEN"
            );
        }
        Ok(token)
    }

    /// `message` with the operator's token.
    pub fn request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {}", self.token()?)
            .parse()
            .context("the operator token must be printable ASCII")?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    /// Opens a gRPC channel, failing fast with the address in the message.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let url = self.url();
        let mut endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid collector address {url:?}"))?
            .connect_timeout(CONNECT_TIMEOUT);
        if self.insecure_plaintext {
            pki::tls::check_plaintext_url(&url)?;
        } else {
            let ca = self
                .ca
                .clone()
                .or_else(|| std::env::var_os("RXSENTRY_CA").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(audit::DEFAULT_STATE_DIR).join("pki/ca.pem"));
            let files = pki::tls::ClientFiles {
                ca,
                identity: None,
                server_name: self.server_name.clone(),
            };
            endpoint = endpoint.tls_config(files.client_config()?)?;
        }
        endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to the collector at {url}"))
    }
}

/// Accepts `host:port` as well as a full URL.
pub fn normalize_url(url: &str, plaintext: bool) -> String {
    if url.contains("://") {
        url.to_owned()
    } else if plaintext {
        format!("http://{url}")
    } else {
        format!("https://{url}")
    }
}

/// A gRPC status as one readable line (tonic's Display includes metadata).
pub fn describe_status(status: &tonic::Status) -> String {
    format!("{} ({:?})", status.message(), status.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_address_gets_a_scheme() {
        assert_eq!(
            normalize_url("collector.local:50051", false),
            "https://collector.local:50051"
        );
        assert_eq!(normalize_url("127.0.0.1:1", true), "http://127.0.0.1:1");
        assert_eq!(normalize_url("https://c:1", true), "https://c:1");
    }

    #[test]
    fn status_line_names_code_and_message() {
        let s = describe_status(&tonic::Status::invalid_argument("kinds: bad"));
        assert_eq!(s, "kinds: bad (InvalidArgument)");
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let access = Access {
            collector: DEFAULT_COLLECTOR.into(),
            ca: None,
            server_name: None,
            insecure_plaintext: false,
            token_file: Some(path.clone()),
        };
        let e = access.token().unwrap_err();
        assert!(format!("{e:#}").contains("chmod 600"), "{e:#}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(access.token().unwrap(), "secret");
    }
}
