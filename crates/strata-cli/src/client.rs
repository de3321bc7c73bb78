//! Connecting to a Strata server.

use std::time::Duration;

use strata_proto::v1::strata_client::StrataClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result, chain};

/// The largest gRPC message the client sends or accepts: one Arrow IPC batch must fit.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How long to wait for the TCP (and HTTP/2) connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub type Client = StrataClient<Channel>;

/// Connects to the server at `url` (`http://host:port`), failing with a message that names
/// the URL when it cannot be reached.
pub async fn connect(url: &str) -> Result<Client> {
    let connect_error = |reason: String| Error::Connect {
        url: url.to_string(),
        reason,
    };
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| connect_error(format!("invalid URL: {}", chain(&e))))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| connect_error(chain(&e)))?;
    Ok(StrataClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE))
}
