//! Connecting to a Strata server: plaintext or TLS, with or without a token.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use strata_proto::v1::strata_client::StrataClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{Error, Result, chain};

/// The largest gRPC message the client sends or accepts: one Arrow IPC batch must fit.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How long to wait for the TCP (and HTTP/2) connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub type Client = StrataClient<InterceptedService<Channel, Credentials>>;

/// How the client proves itself and checks the server, for every connection the
/// process makes (set once from `--token` / `STRATA_TOKEN` and `--tls-ca` /
/// `STRATA_TLS_CA`).
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// PEM file of the certificate authority that signed the server's certificate
    /// (TLS without it trusts the public web roots).
    pub ca: Option<PathBuf>,
}

static SECURITY: OnceLock<Security> = OnceLock::new();

/// Sets the credentials of every later connection (the first call wins).
pub fn configure(security: Security) {
    let _ = SECURITY.set(security);
}

fn security() -> Security {
    SECURITY.get().cloned().unwrap_or_default()
}

/// Adds the bearer token to each request.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    header: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}

/// `host:port` without a scheme means `http://host:port` (`https://` with a CA file).
fn with_scheme(url: &str, tls: bool) -> String {
    if url.contains("://") {
        url.to_string()
    } else if tls {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    }
}

/// Connects to the server at `url` (`http://host:port`, `https://host:port`, or
/// `host:port`), failing with a message that names the URL when it cannot be reached.
pub async fn connect(url: &str) -> Result<Client> {
    let security = security();
    let url = with_scheme(url, security.ca.is_some());
    let connect_error = |reason: String| Error::Connect {
        url: url.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| connect_error(format!("invalid URL: {}", chain(&e))))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        strata_server::install_crypto_provider();
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &security.ca {
            let pem = std::fs::read(ca).map_err(|e| {
                connect_error(format!("cannot read the CA file {}: {e}", ca.display()))
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| connect_error(format!("TLS: {}", chain(&e))))?;
    }
    let header = match &security.token {
        None => None,
        Some(token) => Some(
            format!("Bearer {token}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| connect_error("the token is not a valid header value".into()))?,
        ),
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| connect_error(chain(&e)))?;
    Ok(
        StrataClient::with_interceptor(channel, Credentials { header })
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_address_gets_a_scheme() {
        assert_eq!(
            with_scheme("127.0.0.1:50051", false),
            "http://127.0.0.1:50051"
        );
        assert_eq!(with_scheme("db:1", true), "https://db:1");
        assert_eq!(with_scheme("https://db:1", false), "https://db:1");
    }
}
