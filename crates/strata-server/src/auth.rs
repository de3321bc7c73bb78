//! Who may do what: bearer tokens with roles, checked on every RPC.
//!
//! ```text
//!  request ─▶ AuthLayer: health checks and Flight Handshake pass; otherwise
//!              `authorization: Bearer <token>` (or `Basic <user:token>`) ─▶ SHA-256
//!              ─▶ the configured token with that hash ─▶ Caller{name, role}
//!              (no token, or an unknown one: UNAUTHENTICATED)
//!          ─▶ the method's static role (DropDataset: admin, Ingest: write, …);
//!             too low: PERMISSION_DENIED
//!          ─▶ handlers check what only they know: a SQL statement's kind (a SELECT
//!             needs read, INSERT/DELETE write, CREATE/DROP/RESTORE/VACUUM/tags admin),
//!             a Flight action's or DoPut's kind.
//! ```
//!
//! Tokens are never stored: the configuration holds their SHA-256 (a token is 32
//! random bytes, so a fast hash is enough; `strata token new` makes one). Without
//! tokens configured every caller is an admin, which the server allows on loopback
//! addresses only unless told otherwise (`auth.allow_unauthenticated_remote`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use futures::future::BoxFuture;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use strata_query::Access;
use tonic::Status;

use crate::error::{Error, Result};

/// What a token lets its holder do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries and listings.
    Read,
    /// And ingestion, `INSERT`, `DELETE`, flush, compaction.
    Write,
    /// And datasets and their history: create/drop, rollback, tags, vacuum.
    Admin,
}

impl Role {
    pub fn allows(self, access: Access) -> bool {
        let needed = match access {
            Access::Read => Role::Read,
            Access::Write => Role::Write,
            Access::Admin => Role::Admin,
        };
        self >= needed
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// One accepted token, as the configuration names it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it (for logs and errors).
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token, in hex.
    pub sha256: String,
}

/// The `[auth]` section of the configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// A TOML file of `[[token]]` entries, read at start.
    pub tokens_file: Option<PathBuf>,
    /// Entries given inline.
    pub token: Vec<TokenEntry>,
    /// Serve a non-loopback address without tokens (anyone who reaches the port is an
    /// admin). Off by default.
    pub allow_unauthenticated_remote: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// Who made a request, in its extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// The caller when no tokens are configured.
    pub fn anonymous() -> Self {
        Caller {
            name: "anonymous".into(),
            role: Role::Admin,
        }
    }

    /// Refuses `access` beyond the caller's role.
    pub fn require(&self, access: Access, what: &str) -> Result<(), Status> {
        if self.role.allows(access) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{what} needs the {access} role; the token {:?} has {}",
            self.name,
            self.role.name()
        )))
    }
}

/// Checks `access` for the request's caller (requests made in-process, without the
/// auth layer, are allowed).
pub fn require<T>(request: &tonic::Request<T>, access: Access, what: &str) -> Result<(), Status> {
    match request.extensions().get::<Caller>() {
        Some(caller) => caller.require(access, what),
        None => Ok(()),
    }
}

/// The accepted tokens.
#[derive(Debug, Default)]
pub struct Authenticator {
    by_hash: HashMap<[u8; 32], Caller>,
}

/// SHA-256 of a token, in hex: what the configuration stores.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// A new random token: `strata_` and 43 characters of base64url (32 bytes).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "strata_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

impl Authenticator {
    /// The tokens of the configuration; `None` when there are none (no authentication).
    pub fn from_settings(settings: &AuthSettings) -> Result<Option<Arc<Self>>> {
        let mut entries = settings.token.clone();
        if let Some(path) = &settings.tokens_file {
            entries.extend(read_tokens_file(path)?);
        }
        if entries.is_empty() {
            return Ok(None);
        }
        let mut by_hash = HashMap::new();
        for e in entries {
            let hash = unhex(&e.sha256).ok_or_else(|| {
                Error::Config(format!(
                    "token {:?}: sha256 must be 64 hex digits (`strata token new` makes one)",
                    e.name
                ))
            })?;
            let caller = Caller {
                name: e.name.clone(),
                role: e.role,
            };
            if by_hash.insert(hash, caller).is_some() {
                return Err(Error::Config(format!(
                    "token {:?} has the same hash as another",
                    e.name
                )));
            }
        }
        Ok(Some(Arc::new(Self { by_hash })))
    }

    /// The caller a token belongs to.
    pub fn caller(&self, token: &str) -> Option<&Caller> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash)
    }

    /// The caller of a request's `authorization` header: `Bearer <token>`, or
    /// `Basic base64(<name>:<token>)` (what Flight SQL clients send to Handshake).
    pub fn from_header(&self, header: Option<&str>) -> Result<Caller, Status> {
        let Some(header) = header else {
            return Err(Status::unauthenticated(
                "this server needs a token: send `authorization: Bearer <token>` \
                 (strata --token, ADBC's authorization header or username/password)",
            ));
        };
        let token = token_of(header).ok_or_else(|| {
            Status::unauthenticated("the authorization header is not Bearer or Basic")
        })?;
        self.caller(&token)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }
}

/// The token inside an `authorization` header value.
pub fn token_of(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

fn read_tokens_file(path: &Path) -> Result<Vec<TokenEntry>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read tokens file {}: {e}", path.display())))?;
    let file: TokensFile = toml::from_str(&text)
        .map_err(|e| Error::Config(format!("tokens file {}: {e}", path.display())))?;
    Ok(file.token)
}

/// The role a method needs before its handler runs. Handlers check more where the
/// method alone does not say (a SQL statement, a Flight action, a DoPut's target).
fn method_access(path: &str) -> Option<Access> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    match service {
        "grpc.health.v1.Health" => None,
        "arrow.flight.protocol.FlightService" if method == "Handshake" => None,
        "strata.v1.Strata" => Some(match method {
            "CreateDataset" | "DropDataset" | "Rollback" | "CreateTag" | "DeleteTag" | "Vacuum" => {
                Access::Admin
            }
            "Ingest" | "Flush" | "Compact" => Access::Write,
            _ => Access::Read,
        }),
        _ => Some(Access::Read),
    }
}

/// A tower layer authenticating every request (see the module docs).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Option<Arc<Authenticator>>,
}

impl AuthLayer {
    pub fn new(auth: Option<Arc<Authenticator>>) -> Self {
        Self { auth }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone, Debug)]
pub struct Authenticated<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Authenticated<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(needed) = method_access(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        let caller = match &self.auth {
            None => Caller::anonymous(),
            Some(auth) => {
                let header = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                match auth.from_header(header) {
                    Ok(caller) => caller,
                    Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
                }
            }
        };
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if let Err(status) = caller.require(needed, &method) {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        request.extensions_mut().insert(caller);
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_matched_by_hash_and_roles_nest() {
        let token = new_token();
        let settings = AuthSettings {
            token: vec![TokenEntry {
                name: "loader".into(),
                role: Role::Write,
                sha256: token_hash(&token),
            }],
            ..AuthSettings::default()
        };
        let auth = Authenticator::from_settings(&settings).unwrap().unwrap();
        let caller = auth.from_header(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(caller.role, Role::Write);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("x:{token}"));
        assert_eq!(
            auth.from_header(Some(&format!("Basic {basic}"))).unwrap(),
            caller
        );
        assert!(auth.from_header(Some("Bearer strata_nope")).is_err());
        assert!(auth.from_header(None).is_err());
        assert!(caller.require(Access::Write, "Ingest").is_ok());
        let e = caller.require(Access::Admin, "DropDataset").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(Role::Read.allows(Access::Read) && !Role::Read.allows(Access::Write));
        assert!(
            Authenticator::from_settings(&AuthSettings::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn methods_have_their_roles() {
        assert_eq!(method_access("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            method_access("/arrow.flight.protocol.FlightService/Handshake"),
            None
        );
        assert_eq!(
            method_access("/strata.v1.Strata/DropDataset"),
            Some(Access::Admin)
        );
        assert_eq!(
            method_access("/strata.v1.Strata/Ingest"),
            Some(Access::Write)
        );
        assert_eq!(method_access("/strata.v1.Strata/Query"), Some(Access::Read));
        assert_eq!(
            method_access("/arrow.flight.protocol.FlightService/DoPut"),
            Some(Access::Read)
        );
    }
}
