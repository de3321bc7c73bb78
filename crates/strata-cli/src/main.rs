//! The `strata` binary: see the library docs for the commands.

#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata_cli::{client, datasets, demo, ingest, serve, sql, versions, watch};

/// Strata, a versioned columnar analytics database: command-line client.
#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("STRATA_COMMIT"), ")")
)]
struct Cli {
    /// The Strata server's address, HOST:PORT or a URL, for the client commands
    /// (`serve` listens with --listen).
    #[arg(
        long,
        global = true,
        env = "STRATA_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    server: String,

    /// The token to authenticate with (sent as `authorization: Bearer …`).
    #[arg(long, global = true, env = "STRATA_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// PEM file of the certificate authority that signed the server's certificate;
    /// implies TLS (`https://`) for addresses given without a scheme.
    #[arg(long, global = true, env = "STRATA_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (gRPC, Arrow Flight) on the embedded local store.
    Serve(serve::ServeArgs),
    /// Stream CSV, Parquet or newline-delimited JSON files into a dataset.
    Ingest(ingest::IngestArgs),
    /// Create, list, describe and drop datasets.
    #[command(subcommand)]
    Datasets(datasets::DatasetsCommand),
    /// Commit a dataset's unflushed rows now and print the version.
    Flush {
        /// Dataset name.
        dataset: String,
    },
    /// Run SQL: the statements given, a script on stdin, or an interactive shell.
    Sql(sql::SqlArgs),
    /// List a dataset's versions: time, operation, details, rows added and removed, tags.
    Versions {
        /// Dataset name.
        dataset: String,
    },
    /// Make a new version equal to an earlier one (VERSION: a number, tag:NAME, or an
    /// RFC 3339 timestamp such as 2026-01-01T12:00:00Z).
    Rollback(versions::RollbackArgs),
    /// Name a version (`strata tag DATASET VERSION NAME`), or delete a name
    /// (`strata tag --delete DATASET NAME`).
    Tag(versions::TagArgs),
    /// List a dataset's tags.
    Tags {
        /// Dataset name.
        dataset: String,
    },
    /// Remove old versions (never the head or a tagged one) and the segments only they
    /// use. Without flags, versions of the last 7 days are kept.
    Vacuum(versions::VacuumArgs),
    /// Print a dataset's changes as versions commit: inserted, deleted and updated rows
    /// (from --from VERSION on, or only new ones), filtered on the server with --where.
    Watch(watch::WatchArgs),
    /// Merge a dataset's small segments (a new version with the same rows).
    Compact {
        /// Dataset name.
        dataset: String,
    },
    /// Start an embedded server and walk through ingest, queries, time travel, a bad
    /// load and its rollback, on a generated weather feed.
    Demo(demo::DemoArgs),
    /// Make access tokens for the server's configuration.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Make certificates for trying TLS.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Print a completion script for a shell: `strata completions bash > /etc/bash_completion.d/strata`
    /// (or `source <(strata completions bash)`; zsh, fish, elvish, powershell alike).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Write a private certificate authority (ca.pem, for clients' --tls-ca) and a
    /// server certificate it signed (server.pem, server.key, for serve's --tls-cert and
    /// --tls-key). For trying TLS; production uses certificates of its own PKI.
    SelfSigned {
        /// Directory to write the files into.
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// Names and addresses the server certificate is valid for.
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new random token, and the `[[auth.token]]` entry (its SHA-256, never the
    /// token itself) to add to the server's configuration or tokens file.
    New {
        /// Who will hold it (shown in logs and errors).
        #[arg(long)]
        name: String,
        /// read (queries), write (and ingest, INSERT, DELETE) or admin (and
        /// create/drop, rollback, tags, vacuum).
        #[arg(long, value_parser = ["read", "write", "admin"])]
        role: String,
    },
}

async fn run(cli: Cli, server_given: bool) -> strata_cli::Result<()> {
    if server_given && matches!(cli.command, Command::Serve(_)) {
        return Err(strata_cli::Error::Usage(
            "--server names the server a client command talks to; `serve` listens with --listen HOST:PORT".into(),
        ));
    }
    client::configure(client::Security {
        token: cli.token.clone(),
        ca: cli.tls_ca.clone(),
    });
    let server = cli.server.as_str();
    let mut out = std::io::stdout();
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Ingest(args) => ingest::run(server, args).await,
        Command::Datasets(command) => datasets::run(server, command).await,
        Command::Flush { dataset } => ingest::flush(server, &dataset).await,
        Command::Sql(args) => sql::run(server, args).await,
        Command::Versions { dataset } => {
            versions::versions(&mut client::connect(server).await?, &dataset, &mut out).await
        }
        Command::Rollback(args) => versions::rollback(
            &mut client::connect(server).await?,
            &args.dataset,
            &args.version,
            &mut out,
        )
        .await
        .map(|_| ()),
        Command::Tag(args) => {
            // Check the arguments before connecting.
            args.action()?;
            versions::tag(&mut client::connect(server).await?, &args, &mut out).await
        }
        Command::Tags { dataset } => {
            versions::tags(&mut client::connect(server).await?, &dataset, &mut out).await
        }
        Command::Vacuum(args) => {
            versions::vacuum(&mut client::connect(server).await?, &args, &mut out).await
        }
        Command::Compact { dataset } => {
            versions::compact(&mut client::connect(server).await?, &dataset, &mut out).await
        }
        Command::Watch(args) => {
            watch::run(&mut client::connect(server).await?, &args, &mut out).await
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "strata", &mut std::io::stdout());
            Ok(())
        }
        Command::Tls(TlsCommand::SelfSigned { out, hosts }) => {
            let files = strata_server::tls::write_self_signed(&out, &hosts)
                .map_err(|e| strata_cli::Error::Usage(e.to_string()))?;
            println!(
                "certificate authority (clients: --tls-ca): {}",
                files.ca.display()
            );
            println!(
                "server certificate (--tls-cert):         {}",
                files.cert.display()
            );
            println!(
                "server key (--tls-key):                  {}",
                files.key.display()
            );
            Ok(())
        }
        Command::Token(TokenCommand::New { name, role }) => {
            let token = strata_server::auth::new_token();
            println!("token: {token}");
            println!("(give it to the client; the server keeps only its hash)");
            println!();
            println!(
                "# for the tokens file (--tokens-file), or as [[auth.token]] in the configuration:"
            );
            println!("[[token]]");
            println!("name = {name:?}");
            println!("role = {role:?}");
            println!("sha256 = {:?}", strata_server::auth::token_hash(&token));
            Ok(())
        }
    }
}

/// The command line, with the client-only `--server` hidden from `serve --help`: `serve`
/// gets a hidden argument of the same id, which the global one does not replace (a
/// value given still reaches the top level, where `run` refuses it).
fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command().mut_subcommand("serve", |serve| {
        serve.arg(
            clap::Arg::new("server")
                .long("server")
                .value_name("URL")
                .hide(true),
        )
    })
}

fn main() -> ExitCode {
    // Before any thread allocates.
    strata_server::tune_allocator();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(cli_main()),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn cli_main() -> ExitCode {
    let matches = command().get_matches();
    // Given on the command line (not the default, not STRATA_SERVER from the environment).
    let server_given =
        matches.value_source("server") == Some(clap::parser::ValueSource::CommandLine);
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match Box::pin(run(cli, server_given)).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of the output went away (`strata sql … | head`): nothing to say.
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_commands() {
        let cli = Cli::try_parse_from([
            "strata",
            "ingest",
            "weather",
            "a.csv",
            "b.parquet",
            "--producer",
            "feed-1",
            "--batch-rows",
            "100",
            "--csv-delimiter",
            ";",
            "--server",
            "http://db:1",
        ])
        .unwrap();
        assert_eq!(cli.server, "http://db:1");
        let Command::Ingest(args) = cli.command else {
            panic!("expected ingest")
        };
        assert_eq!(args.files.len(), 2);
        assert_eq!(args.batch_rows, 100);
        assert_eq!(args.csv_delimiter, b';');
        assert_eq!(args.producer.as_deref(), Some("feed-1"));

        let cli = Cli::try_parse_from([
            "strata",
            "datasets",
            "create",
            "w",
            "--column",
            "station:utf8",
            "--column",
            "ts:timestamp(us, UTC)",
            "--partition-key",
            "station",
            "--row-key",
            "ts",
        ])
        .unwrap();
        let Command::Datasets(datasets::DatasetsCommand::Create(args)) = cli.command else {
            panic!("expected datasets create")
        };
        assert_eq!(args.columns.len(), 2);
        assert_eq!(
            args.partition_key.as_deref(),
            Some(&["station".to_string()][..])
        );

        let cli = Cli::try_parse_from(["strata", "sql", "--format", "csv", "SELECT 1"]).unwrap();
        let Command::Sql(args) = cli.command else {
            panic!("expected sql")
        };
        assert_eq!(args.query.as_deref(), Some("SELECT 1"));
        assert_eq!(args.format, Some(strata_cli::query::OutputFormat::Csv));

        let cli = Cli::try_parse_from(["strata", "rollback", "weather", "tag:good"]).unwrap();
        let Command::Rollback(args) = cli.command else {
            panic!("expected rollback")
        };
        assert_eq!(args.version, versions::VersionArg::Tag("good".into()));

        let cli = Cli::try_parse_from(["strata", "tag", "--delete", "weather", "good"]).unwrap();
        let Command::Tag(args) = cli.command else {
            panic!("expected tag")
        };
        assert_eq!(
            args.action().unwrap(),
            versions::TagAction::Delete {
                name: "good".into()
            }
        );

        let cli = Cli::try_parse_from(["strata", "demo", "--rows", "5000"]).unwrap();
        let Command::Demo(args) = cli.command else {
            panic!("expected demo")
        };
        assert_eq!(args.rows, 5000);

        for bad in [
            &["strata", "rollback", "weather", "yesterday"][..],
            &["strata", "rollback", "weather"],
            &["strata", "sql", "--format", "xml", "SELECT 1"],
            &["strata", "vacuum", "weather", "--keep-within", "7 weeks"],
            &["strata", "demo", "--rows", "10"],
            &["strata", "ingest", "weather"],
            &["strata", "ingest", "w", "a.csv", "--batch-rows", "0"],
            &["strata", "ingest", "w", "a.csv", "--producer", "bad id"],
            &["strata", "datasets", "create", "w", "--column", "x"],
            &[
                "strata", "datasets", "create", "w", "--schema", "f.json", "--column", "a:int64",
            ],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
