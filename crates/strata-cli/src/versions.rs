//! `strata versions | tags | rollback | tag | vacuum | compact`: a dataset's history
//! through the version RPCs.
//!
//! A VERSION argument is one of
//! - a version number: `12`;
//! - `tag:NAME`: the version the tag names;
//! - an RFC 3339 timestamp, `2026-01-01T12:00:00Z` (an offset like `+02:00` is honoured,
//!   none means UTC): the newest version committed at or before that time;
//! - `head` (only where the command says so): the newest version.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use clap::Args;
use strata_proto::v1::{
    CompactRequest, CreateTagRequest, DeleteTagRequest, ListTagsRequest, ListVersionsRequest,
    RollbackRequest, VacuumRequest, VersionInfo, VersionRef, version_ref,
};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::output::{group, megabytes};
use crate::query::{output_error, write_table};

/// A version named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionArg {
    Number(u64),
    Tag(String),
    /// Milliseconds since the epoch.
    Timestamp(i64),
    Head,
}

impl VersionArg {
    /// Parses a VERSION argument (see the module docs); `head` only when `allow_head`.
    pub fn parse(text: &str, allow_head: bool) -> Result<Self, String> {
        let text = text.trim();
        if let Some(name) = text.strip_prefix("tag:") {
            if name.is_empty() {
                return Err("tag: needs a name, like tag:release-1".into());
            }
            return Ok(Self::Tag(name.to_string()));
        }
        if allow_head && text.eq_ignore_ascii_case("head") {
            return Ok(Self::Head);
        }
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u64>() {
                Ok(0) => Err("versions start at 1".into()),
                Ok(n) => Ok(Self::Number(n)),
                Err(_) => Err(format!("version {text} is too large")),
            };
        }
        // Only date-like text is tried as a timestamp, so a typo in a tag reference
        // gets the usage message rather than a date parser's complaint.
        if text.len() >= 10 && text.as_bytes()[4] == b'-' {
            return arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text)
                .map(|ns| Self::Timestamp(ns.div_euclid(1_000_000)))
                .map_err(|e| format!("{text:?} is not an RFC 3339 timestamp: {e}"));
        }
        let head = if allow_head { ", `head`" } else { "" };
        Err(format!(
            "{text:?} is not a version: use a version number, tag:NAME{head} or an RFC 3339 \
             timestamp like 2026-01-01T12:00:00Z"
        ))
    }

    /// The RPCs' form (`None` for the head).
    pub fn to_proto(&self) -> Option<VersionRef> {
        let kind = match self {
            Self::Number(n) => version_ref::Kind::Version(*n),
            Self::Tag(t) => version_ref::Kind::Tag(t.clone()),
            Self::Timestamp(ms) => version_ref::Kind::TimestampMs(*ms),
            Self::Head => return None,
        };
        Some(VersionRef { kind: Some(kind) })
    }
}

impl std::fmt::Display for VersionArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "version {n}"),
            Self::Tag(t) => write!(f, "tag {t}"),
            Self::Timestamp(ms) => write!(f, "the version as of {}", format_ms(*ms)),
            Self::Head => f.write_str("the head"),
        }
    }
}

fn parse_version(text: &str) -> Result<VersionArg, String> {
    VersionArg::parse(text, false)
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Dataset name.
    pub dataset: String,
    /// The version to return to: a number, tag:NAME, or an RFC 3339 timestamp (the
    /// newest version committed at or before it).
    #[arg(value_parser = parse_version)]
    pub version: VersionArg,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Create: strata tag DATASET VERSION NAME   (VERSION: a number, tag:NAME, an \
                  RFC 3339 timestamp, or head)\nDelete: strata tag --delete DATASET NAME"
)]
pub struct TagArgs {
    /// Delete the tag NAME instead of creating one.
    #[arg(long)]
    pub delete: bool,
    /// Dataset name.
    pub dataset: String,
    /// VERSION to tag, then NAME; with --delete, just NAME.
    #[arg(value_name = "VERSION|NAME")]
    pub first: String,
    /// The new tag's name.
    #[arg(value_name = "NAME")]
    pub second: Option<String>,
}

/// What a `strata tag` invocation asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagAction {
    Create { version: VersionArg, name: String },
    Delete { name: String },
}

impl TagArgs {
    pub fn action(&self) -> Result<TagAction> {
        match (self.delete, &self.second) {
            (true, None) => Ok(TagAction::Delete {
                name: self.first.clone(),
            }),
            (true, Some(_)) => Err(Error::Invalid(
                "strata tag --delete takes DATASET NAME (no version)".into(),
            )),
            (false, Some(name)) => Ok(TagAction::Create {
                version: VersionArg::parse(&self.first, true).map_err(Error::Invalid)?,
                name: name.clone(),
            }),
            (false, None) => Err(Error::Invalid(
                "strata tag needs DATASET VERSION NAME (VERSION may be `head`); \
                 to delete a tag: strata tag --delete DATASET NAME"
                    .into(),
            )),
        }
    }
}

#[derive(Debug, Args)]
pub struct VacuumArgs {
    /// Dataset name.
    pub dataset: String,
    /// Keep at least the newest N versions.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u64>,
    /// Keep the versions committed within this long: `90s`, `30m`, `12h`, `7d`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub keep_within: Option<i64>,
}

/// `90s`, `30m`, `12h`, `7d`, `500ms` → milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use e.g. 90s, 30m, 12h or 7d"))?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text:?} is not a duration: use e.g. 90s, 30m, 12h or 7d"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// `2026-01-01T12:00:00.123Z`
fn format_ms(ms: i64) -> String {
    let array = TimestampMillisecondArray::from(vec![ms]).with_timezone("UTC");
    let options = arrow::util::display::FormatOptions::default();
    arrow::util::display::ArrayFormatter::try_new(&array, &options)
        .map(|f| f.value(0).to_string())
        .unwrap_or_else(|_| format!("{ms} ms"))
}

/// A version's details without the operation's name: `{"kind":"rollback","to":3}` →
/// `to=3`. Anything that is not a JSON object is shown as it is.
pub fn details_text(details: &str) -> String {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(details) else {
        return details.to_string();
    };
    fields
        .iter()
        .filter(|(k, _)| k.as_str() != "kind")
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The versions as a table: version, time, operation, details, rows added and removed,
/// tags.
pub fn versions_batch(versions: &[VersionInfo]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("version", DataType::UInt64, false),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("operation", DataType::Utf8, false),
        Field::new("details", DataType::Utf8, false),
        Field::new("rows added", DataType::UInt64, false),
        Field::new("rows removed", DataType::UInt64, false),
        Field::new("tags", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(
            versions.iter().map(|v| v.version),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(versions.iter().map(|v| v.timestamp_ms))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            versions.iter().map(|v| v.operation.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            versions.iter().map(|v| details_text(&v.details)),
        )),
        Arc::new(UInt64Array::from_iter_values(
            versions.iter().map(|v| v.rows_added),
        )),
        Arc::new(UInt64Array::from_iter_values(
            versions.iter().map(|v| v.rows_removed),
        )),
        Arc::new(StringArray::from_iter_values(
            versions.iter().map(|v| v.tags.join(", ")),
        )),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `strata versions DATASET`: the retained versions, oldest first.
pub async fn versions(client: &mut Client, dataset: &str, out: &mut dyn Write) -> Result<()> {
    let versions = client
        .list_versions(ListVersionsRequest {
            dataset: dataset.to_string(),
        })
        .await
        .map_err(|s| Error::status(format!("listing the versions of {dataset}"), &s))?
        .into_inner()
        .versions;
    let batch = versions_batch(&versions)?;
    write_table(out, &batch.schema(), &[batch])?;
    let head = versions.last().map_or(0, |v| v.version);
    writeln!(
        out,
        "{} version{}, head {head}",
        versions.len(),
        if versions.len() == 1 { "" } else { "s" }
    )
    .map_err(output_error)
}

/// `strata tags DATASET`.
pub async fn tags(client: &mut Client, dataset: &str, out: &mut dyn Write) -> Result<()> {
    let mut tags = client
        .list_tags(ListTagsRequest {
            dataset: dataset.to_string(),
        })
        .await
        .map_err(|s| Error::status(format!("listing the tags of {dataset}"), &s))?
        .into_inner()
        .tags;
    tags.sort_by(|a, b| a.name.cmp(&b.name));
    let schema = Arc::new(Schema::new(vec![
        Field::new("tag", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new(
            "created",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                tags.iter().map(|t| t.name.as_str()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                tags.iter().map(|t| t.version),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(tags.iter().map(|t| t.created_ms))
                    .with_timezone("UTC"),
            ),
        ],
    )?;
    write_table(out, &schema, &[batch])
}

/// `strata rollback DATASET VERSION`: returns the new head version.
pub async fn rollback(
    client: &mut Client,
    dataset: &str,
    to: &VersionArg,
    out: &mut dyn Write,
) -> Result<u64> {
    let version = client
        .rollback(RollbackRequest {
            dataset: dataset.to_string(),
            to: to.to_proto(),
        })
        .await
        .map_err(|s| Error::status(format!("rolling {dataset} back to {to}"), &s))?
        .into_inner()
        .version
        .ok_or_else(|| Error::Protocol("Rollback answered no version".into()))?;
    let target = serde_json::from_str::<serde_json::Value>(&version.details)
        .ok()
        .and_then(|d| d.get("to").and_then(serde_json::Value::as_u64));
    let restored = match (to, target) {
        (VersionArg::Number(_), _) | (_, None) => to.to_string(),
        (_, Some(n)) => format!("{to} (version {n})"),
    };
    writeln!(
        out,
        "rolled back {dataset} to {restored}: new head version {}",
        version.version
    )
    .map_err(output_error)?;
    Ok(version.version)
}

/// `strata tag …`.
pub async fn tag(client: &mut Client, args: &TagArgs, out: &mut dyn Write) -> Result<()> {
    let dataset = &args.dataset;
    match args.action()? {
        TagAction::Create { version, name } => {
            let info = client
                .create_tag(CreateTagRequest {
                    dataset: dataset.clone(),
                    tag: name.clone(),
                    version: version.to_proto(),
                })
                .await
                .map_err(|s| Error::status(format!("tagging {version} of {dataset}"), &s))?
                .into_inner();
            writeln!(
                out,
                "tagged {dataset} version {} as {}",
                info.version, info.name
            )
            .map_err(output_error)
        }
        TagAction::Delete { name } => {
            client
                .delete_tag(DeleteTagRequest {
                    dataset: dataset.clone(),
                    tag: name.clone(),
                })
                .await
                .map_err(|s| Error::status(format!("deleting tag {name} of {dataset}"), &s))?;
            writeln!(out, "deleted tag {name} of {dataset}").map_err(output_error)
        }
    }
}

/// `strata vacuum …`.
pub async fn vacuum(client: &mut Client, args: &VacuumArgs, out: &mut dyn Write) -> Result<()> {
    let dataset = &args.dataset;
    let r = client
        .vacuum(VacuumRequest {
            dataset: dataset.clone(),
            keep_last: args.keep_last,
            keep_within_ms: args.keep_within,
        })
        .await
        .map_err(|s| Error::status(format!("vacuuming {dataset}"), &s))?
        .into_inner();
    let w = |e| output_error(e);
    if r.version == 0 {
        writeln!(out, "vacuumed {dataset}: nothing to remove").map_err(w)?;
    } else {
        writeln!(out, "vacuumed {dataset}: version {}", r.version).map_err(w)?;
    }
    writeln!(out, "  oldest retained version  {}", r.oldest_retained).map_err(w)?;
    writeln!(
        out,
        "  versions removed         {}",
        group(r.versions_removed)
    )
    .map_err(w)?;
    writeln!(
        out,
        "  segments removed         {} ({})",
        group(r.blobs_removed),
        megabytes(r.bytes_removed)
    )
    .map_err(w)
}

/// `strata compact DATASET`.
pub async fn compact(client: &mut Client, dataset: &str, out: &mut dyn Write) -> Result<()> {
    let version = client
        .compact(CompactRequest {
            dataset: dataset.to_string(),
        })
        .await
        .map_err(|s| Error::status(format!("compacting {dataset}"), &s))?
        .into_inner()
        .version;
    if version == 0 {
        writeln!(out, "compacted {dataset}: nothing needed compacting")
    } else {
        writeln!(out, "compacted {dataset}: version {version}")
    }
    .map_err(output_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_arguments() {
        assert_eq!(VersionArg::parse("12", false), Ok(VersionArg::Number(12)));
        assert_eq!(
            VersionArg::parse("tag:before-load", false),
            Ok(VersionArg::Tag("before-load".into()))
        );
        assert_eq!(
            VersionArg::parse("2026-01-01T00:00:01Z", false),
            Ok(VersionArg::Timestamp(1_767_225_601_000))
        );
        assert_eq!(
            VersionArg::parse("2026-01-01T02:00:00.5+02:00", false),
            Ok(VersionArg::Timestamp(1_767_225_600_500))
        );
        assert_eq!(VersionArg::parse("head", true), Ok(VersionArg::Head));
        assert!(
            VersionArg::parse("head", false)
                .unwrap_err()
                .contains("tag:NAME")
        );
        assert!(
            VersionArg::parse("0", false)
                .unwrap_err()
                .contains("start at 1")
        );
        assert!(
            VersionArg::parse("tag:", false)
                .unwrap_err()
                .contains("name")
        );
        assert!(
            VersionArg::parse("2026-13-45T00:00:00Z", false)
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!(
            VersionArg::parse("good", false)
                .unwrap_err()
                .contains("tag:NAME")
        );
        assert_eq!(
            VersionArg::Tag("x".into()).to_proto(),
            Some(VersionRef {
                kind: Some(version_ref::Kind::Tag("x".into()))
            })
        );
        assert_eq!(VersionArg::Head.to_proto(), None);
    }

    #[test]
    fn tag_arguments() {
        let args = |delete, second: Option<&str>| TagArgs {
            delete,
            dataset: "weather".into(),
            first: "3".into(),
            second: second.map(Into::into),
        };
        assert_eq!(
            args(false, Some("good")).action().unwrap(),
            TagAction::Create {
                version: VersionArg::Number(3),
                name: "good".into()
            }
        );
        assert_eq!(
            args(true, None).action().unwrap(),
            TagAction::Delete { name: "3".into() }
        );
        assert!(args(true, Some("x")).action().is_err());
        assert!(args(false, None).action().is_err());
    }

    #[test]
    fn durations_and_details() {
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("30m"), Ok(1_800_000));
        assert_eq!(parse_duration_ms("12h"), Ok(43_200_000));
        assert_eq!(parse_duration_ms("7d"), Ok(604_800_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert!(parse_duration_ms("7").is_err());
        assert!(parse_duration_ms("d").is_err());
        assert!(parse_duration_ms("7 weeks").is_err());

        assert_eq!(details_text(r#"{"kind":"rollback","to":3}"#), "to=3");
        assert_eq!(
            details_text(r#"{"kind":"delete","predicate":"temperature > 100"}"#),
            "predicate=temperature > 100"
        );
        assert_eq!(details_text(r#"{"kind":"append"}"#), "");
        assert_eq!(details_text("not json"), "not json");
        assert_eq!(format_ms(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
    }
}
