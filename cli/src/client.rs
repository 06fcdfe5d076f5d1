//! Connecting to a collector, shared by every subcommand that talks to one.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};

/// Where `--collector` points when not given.
pub const DEFAULT_COLLECTOR: &str = "http://127.0.0.1:50051";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts `host:port` as well as a full `http://host:port` URL.
pub fn normalize_url(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// Opens a gRPC channel, failing fast with the address in the message.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    let url = normalize_url(url);
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid collector address {url:?}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to the collector at {url}"))
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
            normalize_url("collector.local:50051"),
            "http://collector.local:50051"
        );
        assert_eq!(normalize_url("https://c:1"), "https://c:1");
    }

    #[test]
    fn status_line_names_code_and_message() {
        let s = describe_status(&tonic::Status::invalid_argument("kinds: bad"));
        assert_eq!(s, "kinds: bad (InvalidArgument)");
    }
}
