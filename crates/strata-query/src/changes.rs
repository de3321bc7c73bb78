//! `table_changes('t', from [, to])`: the rows versions `from..=to` inserted, deleted or
//! replaced, as a table (the dataset's columns, then `_change_type`, `_commit_version`,
//! `_commit_timestamp`), computed from what those versions changed
//! ([`strata_table::ChangeCursor`]) and never from the whole table.
//!
//! The engine rewrites the call to the table name `t@changes:<from>,<to>` before
//! planning, having evaluated the arguments: a number is a version, a string a tag,
//! anything else (`TIMESTAMP '…'`, `now() - INTERVAL '1 hour'`) a point in time. `from`
//! as a time means the versions committed after it, `to` as a time those committed at
//! or before it; `to` defaults to the head when the statement is planned.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::TryStreamExt;
use strata_table::{Table, VersionSpec, changes_schema};

use crate::error::{Error, Result};

/// The prefix, after `@`, of a table name that reads changes.
pub const CHANGES_MARK: &str = "changes:";

/// A version bound of `table_changes`, before it is resolved against the dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    Head,
    Version(u64),
    /// Milliseconds since the epoch.
    Time(i64),
    Tag(String),
}

impl Bound {
    fn encode(&self) -> String {
        match self {
            Bound::Head => "head".into(),
            Bound::Version(v) => format!("v{v}"),
            Bound::Time(t) => format!("t{t}"),
            Bound::Tag(tag) => format!("tag:{tag}"),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        if s == "head" {
            Some(Bound::Head)
        } else if let Some(tag) = s.strip_prefix("tag:") {
            Some(Bound::Tag(tag.to_string()))
        } else if let Some(v) = s.strip_prefix('v') {
            v.parse().ok().map(Bound::Version)
        } else {
            s.strip_prefix('t')?.parse().ok().map(Bound::Time)
        }
    }
}

/// `dataset@changes:<from>,<to>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangesName {
    pub dataset: String,
    pub from: Bound,
    pub to: Bound,
}

impl ChangesName {
    pub fn to_table_name(&self) -> String {
        format!(
            "{}@{CHANGES_MARK}{},{}",
            self.dataset,
            self.from.encode(),
            self.to.encode()
        )
    }

    /// Parses a table name of this form; `None` for any other name.
    pub fn parse(name: &str) -> Option<std::result::Result<Self, String>> {
        let (dataset, rest) = name.split_once('@')?;
        let bounds = rest.strip_prefix(CHANGES_MARK)?;
        let parsed = bounds.split_once(',').and_then(|(from, to)| {
            Some(Self {
                dataset: dataset.to_string(),
                from: Bound::decode(from)?,
                to: Bound::decode(to)?,
            })
        });
        Some(parsed.ok_or_else(|| format!("table name {name:?}: malformed change range")))
    }

    /// The provider: the versions resolved now, the rows read when it is scanned.
    pub async fn open(&self, table: &Table) -> Result<StreamingTable> {
        let head = table.head_version().await?;
        let from = match &self.from {
            Bound::Head => head,
            Bound::Version(v) => *v,
            Bound::Tag(tag) => table.resolve(&VersionSpec::Tag(tag.clone())).await?,
            // The versions committed after that time.
            Bound::Time(t) => match table.resolve(&VersionSpec::Timestamp(*t)).await {
                Ok(v) => v + 1,
                Err(strata_table::Error::NoVersionAtTime { .. }) => 1,
                Err(e) => return Err(e.into()),
            },
        };
        let to = match &self.to {
            Bound::Head => head,
            Bound::Version(v) => *v,
            Bound::Tag(tag) => table.resolve(&VersionSpec::Tag(tag.clone())).await?,
            Bound::Time(t) => table.resolve(&VersionSpec::Timestamp(*t)).await?,
        };
        if from == 0 {
            return Err(Error::plan(
                "table_changes: versions start at 1".to_string(),
            ));
        }
        if to > head {
            return Err(strata_table::Error::VersionNotFound {
                dataset: self.dataset.clone(),
                version: to,
                head,
            }
            .into());
        }
        if from > to + 1 {
            return Err(Error::plan(format!(
                "table_changes: from version {from} is after to version {to}"
            )));
        }
        // The columns are those of `to`: older rows read with later columns as nulls.
        let schema = table.manifest(to).await?.schema.clone();
        let partition = ChangesPartition {
            table: table.clone(),
            from,
            to,
            table_schema: schema.clone(),
            schema: changes_schema(&schema),
        };
        Ok(StreamingTable::try_new(
            partition.schema.clone(),
            vec![Arc::new(partition)],
        )?)
    }
}

/// The one partition of a `table_changes` scan: versions in order.
struct ChangesPartition {
    table: Table,
    from: u64,
    to: u64,
    table_schema: SchemaRef,
    schema: SchemaRef,
}

impl fmt::Debug for ChangesPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "table_changes('{}', {}, {})",
            self.table.name(),
            self.from,
            self.to
        )
    }
}

impl PartitionStream for ChangesPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rows = self
            .table
            .changes(self.from, self.to, self.table_schema.clone())
            .map_err(|e| DataFusionError::from(Error::from(e)));
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), rows))
    }
}
