//! TLS and tokens: a server with a certificate and three tokens (read, write, admin),
//! reached through the gRPC API and Flight SQL as clients would.

use std::path::Path;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{Action, FlightClient};
use futures::StreamExt;
use strata_proto::v1::strata_client::StrataClient;
use strata_proto::v1::{
    ListDatasetsRequest, QueryRequest, RollbackRequest, VersionRef, version_ref,
};
use strata_server::auth::token_hash;
use strata_server::{Server, ServerConfig};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::e2e::{batch, ipc};

/// A certificate authority and a server certificate for localhost it signed, in `dir`.
pub(crate) fn make_certificates(dir: &Path) {
    strata_server::tls::write_self_signed(dir, &["localhost".into(), "127.0.0.1".into()]).unwrap();
}

const TOKENS: [(&str, &str, &str); 3] = [
    ("analyst", "read", "strata_read_token_for_tests"),
    ("loader", "write", "strata_write_token_for_tests"),
    ("operator", "admin", "strata_admin_token_for_tests"),
];

/// Starts a TLS server whose tokens file holds [`TOKENS`].
async fn secure_server(dir: &Path) -> Server {
    make_certificates(dir);
    let mut file = String::new();
    for (name, role, token) in TOKENS {
        file.push_str(&format!(
            "[[token]]\nname = {name:?}\nrole = {role:?}\nsha256 = {:?}\n\n",
            token_hash(token)
        ));
    }
    std::fs::write(dir.join("tokens.toml"), file).unwrap();
    let mut config = ServerConfig::ephemeral(dir.join("data"));
    config.tls.cert = Some(dir.join("server.pem"));
    config.tls.key = Some(dir.join("server.key"));
    config.auth.tokens_file = Some(dir.join("tokens.toml"));
    Server::start(config).await.unwrap()
}

async fn tls_channel(server: &Server, dir: &Path) -> Channel {
    let ca = Certificate::from_pem(std::fs::read(dir.join("ca.pem")).unwrap());
    let url = format!("https://localhost:{}", server.addr().port());
    Channel::from_shared(url)
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(ca))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Adds a bearer token to each call.
type AddToken =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

type Authed = StrataClient<tonic::service::interceptor::InterceptedService<Channel, AddToken>>;

fn with_token(channel: Channel, token: Option<&str>) -> Authed {
    let header: Option<MetadataValue<_>> = token.map(|t| format!("Bearer {t}").parse().unwrap());
    let add: AddToken = Box::new(move |mut r: tonic::Request<()>| {
        if let Some(h) = &header {
            r.metadata_mut().insert("authorization", h.clone());
        }
        Ok(r)
    });
    StrataClient::with_interceptor(channel, add)
}

async fn sql_code(c: &mut Authed, sql: &str) -> Result<(), Code> {
    let mut stream = c
        .query(QueryRequest { sql: sql.into() })
        .await
        .map_err(|s| s.code())?
        .into_inner();
    while stream.message().await.map_err(|s| s.code())?.is_some() {}
    Ok(())
}

#[tokio::test]
async fn tls_and_tokens_with_roles_on_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let server = secure_server(dir.path()).await;
    assert!(server.url().starts_with("https://"));

    // Plaintext is not spoken.
    let plain = StrataClient::connect(format!("http://{}", server.addr())).await;
    if let Ok(mut plain) = plain {
        assert!(plain.list_datasets(ListDatasetsRequest {}).await.is_err());
    }

    let channel = tls_channel(&server, dir.path()).await;
    // Health checks need no token; everything else does.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    let mut nobody = with_token(channel.clone(), None);
    let e = nobody
        .list_datasets(ListDatasetsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let mut forger = with_token(channel.clone(), Some("strata_guess"));
    let e = forger
        .list_datasets(ListDatasetsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");

    let [(_, _, read), (_, _, write), (_, _, admin)] = TOKENS;
    let mut reader = with_token(channel.clone(), Some(read));
    let mut writer = with_token(channel.clone(), Some(write));
    let mut operator = with_token(channel.clone(), Some(admin));

    // Datasets: admin only.
    assert_eq!(
        sql_code(
            &mut writer,
            "CREATE TABLE t (k TEXT, v BIGINT, PRIMARY KEY ((k), v))"
        )
        .await,
        Err(Code::PermissionDenied)
    );
    sql_code(
        &mut operator,
        "CREATE TABLE t (k TEXT, v BIGINT, PRIMARY KEY ((k), v))",
    )
    .await
    .unwrap();
    // Rows: write.
    assert_eq!(
        sql_code(&mut reader, "INSERT INTO t VALUES ('a', 1)").await,
        Err(Code::PermissionDenied)
    );
    sql_code(&mut writer, "INSERT INTO t VALUES ('a', 1)")
        .await
        .unwrap();
    sql_code(&mut writer, "INSERT INTO t VALUES ('a', 2)")
        .await
        .unwrap();
    // Reading: everyone.
    sql_code(&mut reader, "SELECT * FROM t").await.unwrap();
    reader.list_datasets(ListDatasetsRequest {}).await.unwrap();
    // History: admin only, through SQL, the RPC and the Flight action.
    assert_eq!(
        sql_code(&mut writer, "RESTORE t TO VERSION AS OF 2").await,
        Err(Code::PermissionDenied)
    );
    let rollback = || RollbackRequest {
        dataset: "t".into(),
        to: Some(VersionRef {
            kind: Some(version_ref::Kind::Version(2)),
        }),
    };
    let e = writer.rollback(rollback()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("admin"), "{e}");
    operator.rollback(rollback()).await.unwrap();
    assert_eq!(
        sql_code(&mut writer, "VACUUM t").await,
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        sql_code(&mut reader, "DROP TABLE t").await,
        Err(Code::PermissionDenied)
    );

    // Ingest: write.
    create_as(&mut operator, "events").await;
    let out = ingest_as(&mut reader, "events").await;
    assert_eq!(out, Err(Code::PermissionDenied));
    assert_eq!(ingest_as(&mut writer, "events").await, Ok(()));

    // Flight SQL: Handshake trades name:token for the bearer token, as ADBC does.
    let mut flight = FlightSqlServiceClient::new(channel.clone());
    assert!(flight.handshake("analyst", "wrong").await.is_err());
    let mut flight = FlightSqlServiceClient::new(channel.clone());
    flight.handshake("analyst", read).await.unwrap();
    assert_eq!(flight.token().map(String::as_str), Some(read));
    let info = flight
        .execute("SELECT count(*) FROM t".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<_> = futures::TryStreamExt::try_collect(flight.do_get(ticket).await.unwrap())
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let e = flight
        .execute_update("DELETE FROM t".into(), None)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("PermissionDenied") || e.to_string().contains("write role"),
        "{e}"
    );
    // A Flight action needs its role too.
    let mut raw = FlightClient::new(channel.clone());
    raw.add_header("authorization", &format!("Bearer {write}"))
        .unwrap();
    let body = serde_json::json!({"dataset": "t", "version": 1}).to_string();
    let e = raw
        .do_action(Action::new("rollback", body.clone()))
        .await
        .err()
        .expect("refused");
    assert!(
        e.to_string().contains("PermissionDenied") || e.to_string().contains("admin"),
        "{e}"
    );
    let flushed = raw
        .do_action(Action::new(
            "flush",
            serde_json::json!({"dataset": "t"}).to_string(),
        ))
        .await
        .unwrap()
        .next()
        .await;
    assert!(matches!(flushed, Some(Ok(_))), "{flushed:?}");
    server.shutdown().await.unwrap();
}

async fn create_as(c: &mut Authed, name: &str) {
    sql_code(
        c,
        &format!(
            "CREATE TABLE {name} (k TEXT NOT NULL, t BIGINT NOT NULL, v DOUBLE, PRIMARY KEY ((k)))"
        ),
    )
    .await
    .unwrap();
}

async fn ingest_as(c: &mut Authed, dataset: &str) -> Result<(), Code> {
    use strata_proto::v1::{IngestBatch, IngestOpen, IngestRequest, ingest_request};
    let messages = vec![
        IngestRequest {
            kind: Some(ingest_request::Kind::Open(IngestOpen {
                dataset: dataset.into(),
                producer: String::new(),
            })),
        },
        IngestRequest {
            kind: Some(ingest_request::Kind::Batch(IngestBatch {
                sequence: 1,
                arrow_ipc: ipc(&batch(0, 10)),
            })),
        },
    ];
    let mut responses = c
        .ingest(futures::stream::iter(messages))
        .await
        .map_err(|s| s.code())?
        .into_inner();
    while responses.message().await.map_err(|s| s.code())?.is_some() {}
    Ok(())
}

#[tokio::test]
async fn without_tokens_only_loopback_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path().join("a"));
    config.listen = "0.0.0.0:0".into();
    let e = Server::start(config.clone()).await.unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
    config.auth.allow_unauthenticated_remote = true;
    let server = Server::start(config).await.unwrap();
    server.shutdown().await.unwrap();
}

/// ADBC (bearer header, and username/password through Handshake) and pyarrow.flight
/// over TLS: tools/python/secure_clients.py.
#[tokio::test]
async fn python_clients_with_tls_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = secure_server(dir.path()).await;
    let url = format!("grpc+tls://localhost:{}", server.addr().port());
    let ca = dir.path().join("ca.pem").display().to_string();
    let args = vec![url, ca, TOKENS[0].2.to_string()];
    let report = crate::e2e::run_python("secure_clients.py", args).await;
    assert_eq!(report["bearer"], 42);
    assert_eq!(report["handshake"], 7);
    assert_eq!(report["anonymous"], "refused");
    server.shutdown().await.unwrap();
}
