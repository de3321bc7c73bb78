//! The `strata` binary: see the library docs for the commands.

#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata_cli::{datasets, ingest, serve};

/// Strata, a versioned columnar analytics database: command-line client.
#[derive(Debug, Parser)]
#[command(name = "strata", version)]
struct Cli {
    /// The Strata server's gRPC address.
    #[arg(
        long,
        global = true,
        env = "STRATA_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    server: String,

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
}

async fn run(cli: Cli) -> strata_cli::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Ingest(args) => ingest::run(&cli.server, args).await,
        Command::Datasets(command) => datasets::run(&cli.server, command).await,
        Command::Flush { dataset } => ingest::flush(&cli.server, &dataset).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match Box::pin(run(cli)).await {
        Ok(()) => ExitCode::SUCCESS,
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

        for bad in [
            &["strata", "ingest", "weather"][..],
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
