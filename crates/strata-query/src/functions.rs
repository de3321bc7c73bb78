//! Introspection table functions:
//!
//! - `strata_versions('weather')`: every retained version, oldest first — number, commit
//!   time, operation and its details, rows added and removed, tags;
//! - `strata_segments('weather' [, version])`: the live segments at the head (or at
//!   `version`) — shard, id, rows, live and deleted rows, bytes, primary key range;
//! - `strata_cache()`: the decoded-column cache ([`crate::cache`]) — capacity, bytes
//!   and columns held, hits, misses, columns decoded into it, evictions — and the
//!   kept plans ([`crate::plan_cache`]): how many, hits, misses.
//!
//! DataFusion asks for a table function's provider synchronously while planning, so the
//! functions return a provider with a fixed schema that reads the metadata when scanned.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use strata_table::{Catalog, VersionSpec};

use crate::cache::SegmentCache;
use crate::error::{Error, Result};
use crate::plan_cache::PlanCache;

/// Which introspection table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Versions,
    Segments,
    Cache,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Versions => "strata_versions",
            Kind::Segments => "strata_segments",
            Kind::Cache => "strata_cache",
        }
    }

    fn schema(self) -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        Arc::new(Schema::new(match self {
            Kind::Versions => vec![
                Field::new("version", DataType::UInt64, false),
                Field::new("committed_at", ts, false),
                Field::new("operation", DataType::Utf8, false),
                Field::new("details", DataType::Utf8, false),
                Field::new("rows_added", DataType::UInt64, false),
                Field::new("rows_removed", DataType::UInt64, false),
                Field::new("tags", DataType::Utf8, true),
                Field::new("is_head", DataType::Boolean, false),
            ],
            Kind::Segments => vec![
                Field::new("shard", DataType::UInt32, false),
                Field::new("segment", DataType::Utf8, false),
                Field::new("rows", DataType::UInt64, false),
                Field::new("live_rows", DataType::UInt64, false),
                Field::new("deleted_rows", DataType::UInt64, false),
                Field::new("bytes", DataType::UInt64, false),
                Field::new("created_at", ts, false),
                Field::new("pk_min", DataType::Utf8, false),
                Field::new("pk_max", DataType::Utf8, false),
            ],
            Kind::Cache => [
                "capacity_bytes",
                "used_bytes",
                "columns",
                "hits",
                "misses",
                "inserts",
                "inserted_bytes",
                "evictions",
                "fills_pending",
                "fills_dropped",
                "plans",
                "plan_hits",
                "plan_misses",
            ]
            .into_iter()
            .map(|n| Field::new(n, DataType::UInt64, false))
            .collect(),
        }))
    }
}

/// A table function of [`Kind`] over a catalog.
pub struct Introspection {
    catalog: Catalog,
    cache: Arc<SegmentCache>,
    plans: Arc<PlanCache>,
    kind: Kind,
}

impl fmt::Debug for Introspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())
    }
}

/// The table functions, with their names, for registration.
pub fn table_functions(
    catalog: &Catalog,
    cache: &Arc<SegmentCache>,
    plans: &Arc<PlanCache>,
) -> Vec<(&'static str, Arc<dyn TableFunctionImpl>)> {
    [Kind::Versions, Kind::Segments, Kind::Cache]
        .into_iter()
        .map(|kind| {
            let f: Arc<dyn TableFunctionImpl> = Arc::new(Introspection {
                catalog: catalog.clone(),
                cache: cache.clone(),
                plans: plans.clone(),
                kind,
            });
            (kind.name(), f)
        })
        .collect()
}

fn literal_arg(kind: Kind, exprs: &[Expr], i: usize) -> Result<Option<ScalarValue>> {
    match exprs.get(i) {
        None => Ok(None),
        Some(Expr::Literal(v, _)) if !v.is_null() => Ok(Some(v.clone())),
        Some(e) => Err(Error::plan(format!(
            "{}: argument {} must be a literal, got {e}",
            kind.name(),
            i + 1
        ))),
    }
}

impl TableFunctionImpl for Introspection {
    fn call_with_args(&self, args: TableFunctionArgs<'_, '_>) -> DfResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let usage = match self.kind {
            Kind::Versions => "strata_versions('dataset')",
            Kind::Segments => "strata_segments('dataset' [, version])",
            Kind::Cache => "strata_cache()",
        };
        if self.kind == Kind::Cache {
            if !exprs.is_empty() {
                return Err(Error::plan(format!("usage: {usage}")).into());
            }
            return Ok(Arc::new(IntrospectionTable {
                catalog: self.catalog.clone(),
                cache: self.cache.clone(),
                plans: self.plans.clone(),
                kind: self.kind,
                dataset: String::new(),
                version: VersionSpec::Head,
            }));
        }
        let max_args = if self.kind == Kind::Segments { 2 } else { 1 };
        if exprs.is_empty() || exprs.len() > max_args {
            return Err(Error::plan(format!("usage: {usage}")).into());
        }
        let dataset = match literal_arg(self.kind, exprs, 0)? {
            Some(ScalarValue::Utf8(Some(s)))
            | Some(ScalarValue::Utf8View(Some(s)))
            | Some(ScalarValue::LargeUtf8(Some(s))) => s,
            _ => return Err(Error::plan(format!("usage: {usage}")).into()),
        };
        let version = match literal_arg(self.kind, exprs, 1)? {
            None => VersionSpec::Head,
            Some(v) => match v.cast_to(&DataType::UInt64) {
                Ok(ScalarValue::UInt64(Some(n))) => VersionSpec::Version(n),
                _ => {
                    return Err(Error::plan(format!(
                        "{}: the version must be a positive integer, got {v}",
                        self.kind.name()
                    ))
                    .into());
                }
            },
        };
        Ok(Arc::new(IntrospectionTable {
            catalog: self.catalog.clone(),
            cache: self.cache.clone(),
            plans: self.plans.clone(),
            kind: self.kind,
            dataset,
            version,
        }))
    }
}

struct IntrospectionTable {
    catalog: Catalog,
    cache: Arc<SegmentCache>,
    plans: Arc<PlanCache>,
    kind: Kind,
    dataset: String,
    version: VersionSpec,
}

impl fmt::Debug for IntrospectionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}('{}')", self.kind.name(), self.dataset)
    }
}

impl IntrospectionTable {
    async fn rows(&self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = match self.kind {
            Kind::Cache => {
                let s = self.cache.stats();
                let (plans, plan_hits, plan_misses) = self.plans.counts();
                [
                    s.capacity_bytes,
                    s.used_bytes,
                    s.entries,
                    s.hits,
                    s.misses,
                    s.inserts,
                    s.inserted_bytes,
                    s.evictions,
                    s.fills_pending,
                    s.fills_dropped,
                    plans as u64,
                    plan_hits,
                    plan_misses,
                ]
                .into_iter()
                .map(|v| Arc::new(UInt64Array::from(vec![v])) as ArrayRef)
                .collect()
            }
            Kind::Versions => {
                let table = self.catalog.open_table(&self.dataset).await?;
                let versions = table.list_versions().await?;
                let tags = table.list_tags().await?;
                let head = versions.last().map_or(0, |v| v.version);
                let tags_of = |v: u64| {
                    let names: Vec<&str> = tags
                        .iter()
                        .filter(|t| t.version == v)
                        .map(|t| t.name.as_str())
                        .collect();
                    (!names.is_empty()).then(|| names.join(","))
                };
                vec![
                    Arc::new(UInt64Array::from_iter_values(
                        versions.iter().map(|v| v.version),
                    )),
                    Arc::new(
                        TimestampMillisecondArray::from_iter_values(
                            versions.iter().map(|v| v.timestamp_ms),
                        )
                        .with_timezone("UTC"),
                    ),
                    Arc::new(StringArray::from_iter_values(
                        versions.iter().map(|v| v.operation.name()),
                    )),
                    Arc::new(StringArray::from_iter_values(versions.iter().map(|v| {
                        serde_json::to_string(&v.operation).unwrap_or_default()
                    }))),
                    Arc::new(UInt64Array::from_iter_values(
                        versions.iter().map(|v| v.rows_added),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        versions.iter().map(|v| v.rows_removed),
                    )),
                    Arc::new(StringArray::from_iter(
                        versions.iter().map(|v| tags_of(v.version)),
                    )),
                    Arc::new(BooleanArray::from_iter(
                        versions.iter().map(|v| Some(v.version == head)),
                    )),
                ]
            }
            Kind::Segments => {
                let table = self.catalog.open_table(&self.dataset).await?;
                let snapshot = table.snapshot(&self.version).await?;
                let segs: Vec<_> = snapshot.manifest().live_segments().cloned().collect();
                let key = |k: &[strata_types::Value]| serde_json::to_string(k).unwrap_or_default();
                vec![
                    Arc::new(UInt32Array::from_iter_values(
                        segs.iter().map(|s| s.meta.shard),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        segs.iter().map(|s| s.meta.id.as_str()),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        segs.iter().map(|s| s.meta.rows),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        segs.iter().map(|s| s.live_rows()),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        segs.iter().map(|s| s.meta.rows - s.live_rows()),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        segs.iter().map(|s| s.meta.bytes),
                    )),
                    Arc::new(
                        TimestampMillisecondArray::from_iter_values(
                            segs.iter().map(|s| s.meta.created_ms),
                        )
                        .with_timezone("UTC"),
                    ),
                    Arc::new(StringArray::from_iter_values(
                        segs.iter().map(|s| key(&s.meta.pk_min)),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        segs.iter().map(|s| key(&s.meta.pk_max)),
                    )),
                ]
            }
        };
        Ok(RecordBatch::try_new(self.kind.schema(), columns)?)
    }
}

#[async_trait]
impl TableProvider for IntrospectionTable {
    fn schema(&self) -> SchemaRef {
        self.kind.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = self.rows().await?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.kind.schema(),
            projection.cloned(),
        )?)
    }
}
