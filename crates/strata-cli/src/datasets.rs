//! `strata datasets …`: create, list, describe and drop datasets.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use strata_proto::v1::{
    Column, CreateDatasetRequest, DatasetInfo, DatasetSpec as ProtoSpec, DescribeDatasetRequest,
    DropDatasetRequest, ListDatasetsRequest,
};
use strata_types::{ColumnDef, DatasetSpec, DatasetSpecDef, format_type, parse_type};

use crate::client;
use crate::error::{Error, Result};
use crate::output::group;

#[derive(Debug, Subcommand)]
pub enum DatasetsCommand {
    /// Create a dataset from a JSON spec file or from --column flags.
    Create(CreateArgs),
    /// List the datasets' names.
    List,
    /// Show a dataset's columns, keys, shards, head version, sizes and producer marks.
    Describe {
        /// Dataset name.
        name: String,
    },
    /// Drop a dataset with all its versions, segments and unflushed rows.
    Drop {
        /// Dataset name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Dataset name (replaces the name found in --schema).
    pub name: String,

    /// A JSON dataset spec, like schemas/weather.json.
    #[arg(long, value_name = "FILE", conflicts_with = "from")]
    pub schema: Option<PathBuf>,

    /// Take the columns from a data file (CSV with a header, Parquet, NDJSON): names
    /// and types inferred from it (CSV and NDJSON: from the first 10,000 rows), all
    /// nullable but the key columns. The spec made is printed.
    #[arg(long, value_name = "FILE", conflicts_with = "columns")]
    pub from: Option<PathBuf>,

    /// A column, repeatable: `station:varchar`, `ts:timestamp` (or `timestamp(ms, UTC)`),
    /// `temperature:double`. Type names as in SQL or JSON specs. Columns are nullable
    /// unless they end in `:not null`; key columns are never null.
    #[arg(
        long = "column",
        value_name = "NAME:TYPE[:null]",
        value_parser = parse_column,
        conflicts_with = "schema"
    )]
    pub columns: Vec<ColumnDef>,

    /// Partition key columns (comma-separated); required without --schema.
    #[arg(long, value_name = "COL,...", value_delimiter = ',')]
    pub partition_key: Option<Vec<String>>,

    /// Row key columns (comma-separated); none makes the dataset append-only.
    #[arg(long, value_name = "COL,...", value_delimiter = ',')]
    pub row_key: Option<Vec<String>>,

    /// Number of shards (default: the spec file's, else the server's default).
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
}

/// Runs one `datasets` subcommand against the server at `server`.
pub async fn run(server: &str, command: DatasetsCommand) -> Result<()> {
    // Build (and check) the spec before touching the network.
    let spec = match &command {
        DatasetsCommand::Create(args) => Some(build_spec(args)?),
        _ => None,
    };
    let mut client = client::connect(server).await?;
    match command {
        DatasetsCommand::Create(_) => {
            let spec = spec.unwrap_or_default();
            let name = spec.name.clone();
            let info = client
                .create_dataset(CreateDatasetRequest { spec: Some(spec) })
                .await
                .map_err(|s| Error::status(format!("creating dataset {name}"), &s))?
                .into_inner();
            println!("created dataset {name}");
            if let DatasetsCommand::Create(CreateArgs { from: Some(_), .. }) = &command {
                // The spec made from the file, as a spec file (for --schema next time).
                let made = info.spec.clone().unwrap_or_default();
                let spec = serde_json::json!({
                    "name": made.name,
                    "columns": made.columns.iter().map(|c| serde_json::json!({
                        "name": c.name, "type": c.r#type, "nullable": c.nullable,
                    })).collect::<Vec<_>>(),
                    "partition_key": made.partition_key,
                    "row_key": made.row_key,
                    "shards": made.shards,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&spec).unwrap_or_default()
                );
            }
            write_info(&mut std::io::stdout(), &info).map_err(crate::query::output_error)?;
        }
        DatasetsCommand::List => {
            let names = client
                .list_datasets(ListDatasetsRequest {})
                .await
                .map_err(|s| Error::status("listing datasets", &s))?
                .into_inner()
                .names;
            if names.is_empty() {
                eprintln!("no datasets");
            }
            for name in names {
                println!("{name}");
            }
        }
        DatasetsCommand::Describe { name } => {
            let info = client
                .describe_dataset(DescribeDatasetRequest { name: name.clone() })
                .await
                .map_err(|s| Error::status(format!("describing dataset {name}"), &s))?
                .into_inner();
            write_info(&mut std::io::stdout(), &info).map_err(crate::query::output_error)?;
        }
        DatasetsCommand::Drop { name } => {
            client
                .drop_dataset(DropDatasetRequest { name: name.clone() })
                .await
                .map_err(|s| Error::status(format!("dropping dataset {name}"), &s))?;
            println!("dropped dataset {name}");
        }
    }
    Ok(())
}

/// Parses a `--column NAME:TYPE[:null|:not null]` flag. The type is Strata's text form
/// (see [`strata_types::parse_type`], which also takes SQL's names) and comes back
/// normalised (`double` → `float64`). Columns are nullable unless marked `:not null`, as
/// in SQL and JSON specs; [`build_spec`] makes key columns non-nullable.
pub fn parse_column(text: &str) -> Result<ColumnDef, String> {
    let (name, rest) = text
        .split_once(':')
        .ok_or_else(|| format!("expected NAME:TYPE[:null|:not null], got {text:?}"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("missing column name in {text:?}"));
    }
    let rest = rest.trim();
    // The type itself may contain ':' (a time zone like "+05:30"), so only a final
    // ":null" / ":not null" segment is the nullability marker.
    let (type_text, nullable) = match rest.rsplit_once(':') {
        Some((ty, flag)) => match flag.trim().to_ascii_lowercase().as_str() {
            "null" | "nullable" => (ty.trim(), true),
            "not null" | "notnull" | "not_null" => (ty.trim(), false),
            _ => (rest, true),
        },
        None => (rest, true),
    };
    if type_text.is_empty() {
        return Err(format!("missing column type in {text:?}"));
    }
    let data_type = parse_type(type_text).map_err(|e| e.to_string())?;
    let data_type = format_type(&data_type).map_err(|e| e.to_string())?;
    Ok(ColumnDef {
        name: name.to_string(),
        data_type,
        nullable,
    })
}

/// Builds the spec to send from `--schema` or the column flags, and validates it with the
/// same rules the server applies. `shards` 0 asks for the server's default.
pub fn build_spec(args: &CreateArgs) -> Result<ProtoSpec> {
    let keys = |flag: &Option<Vec<String>>| {
        flag.as_ref().map(|cols| {
            cols.iter()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
    };
    let mut def = if let Some(path) = &args.schema {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut def: DatasetSpecDef = serde_json::from_str(&text)
            .map_err(|e| Error::file(path, format!("not a dataset spec: {e}")))?;
        def.name.clone_from(&args.name);
        def
    } else {
        let inferred;
        let columns = match &args.from {
            Some(path) => {
                inferred = crate::read::infer_columns(path)?;
                &inferred
            }
            None => &args.columns,
        };
        if columns.is_empty() {
            return Err(Error::Invalid(
                "give the columns with --column NAME:TYPE[:not null] (repeatable), \
                 or a JSON spec with --schema FILE"
                    .into(),
            ));
        }
        if keys(&args.partition_key).is_none_or(|k| k.is_empty()) {
            return Err(Error::Invalid(
                "a dataset needs a partition key: --partition-key COL[,COL...]".into(),
            ));
        }
        DatasetSpecDef {
            name: args.name.clone(),
            columns: columns.clone(),
            partition_key: Vec::new(),
            row_key: Vec::new(),
            shards: 0,
        }
    };
    if let Some(cols) = keys(&args.partition_key) {
        def.partition_key = cols;
    }
    if let Some(cols) = keys(&args.row_key) {
        def.row_key = cols;
    }
    if args.schema.is_none() {
        // Key columns are never null: no need to say so on the command line.
        for c in &mut def.columns {
            if def.partition_key.contains(&c.name) || def.row_key.contains(&c.name) {
                c.nullable = false;
            }
        }
    }
    if let Some(shards) = args.shards {
        if shards == 0 {
            return Err(Error::Invalid("--shards must be at least 1".into()));
        }
        def.shards = shards;
    }

    // Validate locally for a precise message before any round trip; 0 shards (the
    // server's default) is fine here.
    let mut check = def.clone();
    if check.shards == 0 {
        check.shards = 1;
    }
    DatasetSpec::from_def(&check)
        .map_err(|e| Error::Invalid(format!("invalid dataset spec: {e}")))?;

    Ok(spec_to_proto(def))
}

/// A dataset spec in the API's form.
pub fn spec_to_proto(def: DatasetSpecDef) -> ProtoSpec {
    ProtoSpec {
        name: def.name,
        columns: def
            .columns
            .into_iter()
            .map(|c| Column {
                name: c.name,
                r#type: c.data_type,
                nullable: c.nullable,
            })
            .collect(),
        partition_key: def.partition_key,
        row_key: def.row_key,
        shards: def.shards,
    }
}

/// Writes a dataset's description, aligned for reading.
pub fn write_info(out: &mut dyn std::io::Write, info: &DatasetInfo) -> std::io::Result<()> {
    let spec = info.spec.clone().unwrap_or_default();
    let name_width = spec.columns.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let type_width = spec
        .columns
        .iter()
        .map(|c| c.r#type.len())
        .max()
        .unwrap_or(0);
    let keys = |cols: &[String]| {
        if cols.is_empty() {
            "(none)".to_string()
        } else {
            cols.join(", ")
        }
    };
    let key_of = |name: &String| {
        if spec.partition_key.contains(name) {
            "  partition key"
        } else if spec.row_key.contains(name) {
            "  row key"
        } else {
            ""
        }
    };

    writeln!(out, "dataset        {}", spec.name)?;
    writeln!(out, "columns")?;
    for c in &spec.columns {
        let null = if c.nullable { "null" } else { "not null" };
        let key = key_of(&c.name);
        writeln!(
            out,
            "  {:name_width$}  {:type_width$}  {null:8}{key}",
            c.name, c.r#type
        )?;
    }
    writeln!(out, "partition key  {}", keys(&spec.partition_key))?;
    let row_key = if spec.row_key.is_empty() {
        "(none: append-only)".to_string()
    } else {
        keys(&spec.row_key)
    };
    writeln!(out, "row key        {row_key}")?;
    writeln!(out, "shards         {}", spec.shards)?;
    writeln!(out, "head version   {}", info.head_version)?;
    writeln!(out, "live rows      {}", group(info.live_rows))?;
    writeln!(out, "segments       {}", group(info.segments))?;
    writeln!(out, "unflushed rows {}", group(info.unflushed_rows))?;
    if info.producers.is_empty() {
        writeln!(out, "producers      (none)")?;
    } else {
        writeln!(out, "producers")?;
        let mut producers: Vec<_> = info.producers.iter().collect();
        producers.sort();
        let width = producers.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        for (producer, sequence) in producers {
            writeln!(out, "  {producer:width$}  last sequence {sequence}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, nullable: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            data_type: ty.into(),
            nullable,
        }
    }

    fn args(name: &str) -> CreateArgs {
        CreateArgs {
            name: name.into(),
            schema: None,
            from: None,
            columns: Vec::new(),
            partition_key: None,
            row_key: None,
            shards: None,
        }
    }

    #[test]
    fn column_flags() {
        // Nullable unless marked, as in SQL and JSON specs; SQL's type names work.
        assert_eq!(
            parse_column("station:utf8").unwrap(),
            col("station", "utf8", true)
        );
        assert_eq!(
            parse_column("station:VARCHAR:not null").unwrap(),
            col("station", "utf8", false)
        );
        assert_eq!(
            parse_column("t:timestamp").unwrap(),
            col("t", "timestamp(us)", true)
        );
        assert_eq!(
            parse_column("t:TIMESTAMPTZ").unwrap(),
            col("t", "timestamp(us, UTC)", true)
        );
        assert_eq!(parse_column("n:bigint").unwrap(), col("n", "int64", true));
        assert_eq!(
            parse_column("ts:timestamp(us, UTC)").unwrap(),
            col("ts", "timestamp(us, UTC)", true)
        );
        assert_eq!(
            parse_column("temperature:double:null").unwrap(),
            col("temperature", "float64", true)
        );
        assert_eq!(
            parse_column("t:timestamp(ms, +05:30):NOT NULL").unwrap(),
            col("t", "timestamp(ms, +05:30)", false)
        );
        assert_eq!(
            parse_column("t:timestamp(ms, +05:30)").unwrap(),
            col("t", "timestamp(ms, +05:30)", true)
        );
        assert_eq!(
            parse_column("price:decimal128(10, 2)").unwrap(),
            col("price", "decimal128(10, 2)", true)
        );
        assert!(parse_column("station").unwrap_err().contains("NAME:TYPE"));
        assert!(parse_column(":utf8").unwrap_err().contains("name"));
        assert!(parse_column("x:").unwrap_err().contains("type"));
        assert!(parse_column("x::null").unwrap_err().contains("type"));
        assert!(
            parse_column("x:list<int>")
                .unwrap_err()
                .contains("unsupported")
        );
    }

    /// Key columns given without a marker become non-nullable.
    #[test]
    fn key_columns_are_not_null_without_saying_so() {
        let mut a = args("weather");
        a.columns = vec![
            parse_column("station:varchar").unwrap(),
            parse_column("ts:timestamp").unwrap(),
            parse_column("temperature:double").unwrap(),
        ];
        a.partition_key = Some(vec!["station".into()]);
        a.row_key = Some(vec!["ts".into()]);
        let spec = build_spec(&a).unwrap();
        let nullable: Vec<bool> = spec.columns.iter().map(|c| c.nullable).collect();
        assert_eq!(nullable, [false, false, true]);
    }

    #[test]
    fn spec_from_flags() {
        let mut a = args("weather");
        a.columns = vec![
            col("station", "utf8", false),
            col("ts", "timestamp(us, UTC)", false),
            col("temperature", "float64", true),
        ];
        a.partition_key = Some(vec!["station".into()]);
        a.row_key = Some(vec!["ts".into()]);
        let spec = build_spec(&a).unwrap();
        assert_eq!(spec.name, "weather");
        assert_eq!(spec.columns.len(), 3);
        assert_eq!(spec.columns[1].r#type, "timestamp(us, UTC)");
        assert!(spec.columns[2].nullable);
        assert_eq!(spec.partition_key, ["station"]);
        assert_eq!(spec.row_key, ["ts"]);
        assert_eq!(spec.shards, 0, "0 asks for the server's default");

        a.shards = Some(3);
        assert_eq!(build_spec(&a).unwrap().shards, 3);

        // Key columns are made non-nullable.
        a.columns[0].nullable = true;
        assert!(!build_spec(&a).unwrap().columns[0].nullable);
        a.columns[0].nullable = false;

        a.partition_key = None;
        assert!(
            build_spec(&a)
                .unwrap_err()
                .to_string()
                .contains("partition key")
        );
        assert!(
            build_spec(&args("empty"))
                .unwrap_err()
                .to_string()
                .contains("--column")
        );
    }

    #[test]
    fn spec_from_file_with_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weather.json");
        std::fs::write(
            &path,
            r#"{"name":"weather","columns":[
                {"name":"station","type":"utf8","nullable":false},
                {"name":"ts","type":"timestamp(us, UTC)","nullable":false},
                {"name":"temperature","type":"float64"}],
              "partition_key":["station"],"row_key":["ts"],"shards":8}"#,
        )
        .unwrap();
        let mut a = args("weather2");
        a.schema = Some(path.clone());
        let spec = build_spec(&a).unwrap();
        assert_eq!(spec.name, "weather2");
        assert_eq!(spec.shards, 8);
        assert!(
            spec.columns[2].nullable,
            "nullable defaults to true in files"
        );

        a.shards = Some(2);
        a.row_key = Some(vec![String::new()]);
        let spec = build_spec(&a).unwrap();
        assert_eq!(spec.shards, 2);
        assert!(spec.row_key.is_empty(), "--row-key '' clears the row key");

        std::fs::write(&path, "{ nope").unwrap();
        let err = build_spec(&a).unwrap_err().to_string();
        assert!(err.contains("not a dataset spec"), "{err}");
    }
}
