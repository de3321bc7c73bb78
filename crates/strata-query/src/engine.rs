//! [`Engine`]: SQL text in, Arrow record batches out.
//!
//! ```text
//!  sql ─▶ tag_markers (VERSION AS OF 'tag')
//!      ─▶ RESTORE / tags / OPTIMIZE / VACUUM? ─▶ Command
//!      ─▶ DFParser(StrataDialect) ─▶ CREATE/DROP/ALTER/DELETE? ─▶ Command
//!      ─▶ rewrite `t VERSION AS OF n` ─▶ "t@vn" (TIMESTAMP AS OF: evaluated first)
//!      ─▶ SessionState.statement_to_plan ─▶ Prepared (plan, parameters)
//!  Prepared.execute(params) ─▶ optimise, physical plan (StrataTable.scan prunes) ─▶ stream
//!      └─ under the query timeout; memory from one pool shared by all queries (spills)
//! ```
//!
//! Every statement sees the datasets as they are when it is planned: each table
//! reference resolves to one version, so a query is a consistent snapshot even while
//! ingestion commits.

use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{CatalogProviderList, MemoryCatalogProviderList};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ExecutionPlan, RecordBatchStream, SendableRecordBatchStream, execute_stream,
};
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    self, Expr as SqlExpr, TableFactor, TableVersion, Value as SqlValue, VisitMut, VisitorMut,
};
use futures::{Stream, StreamExt, TryStreamExt};
use strata_table::{Catalog, Table, VersionSpec};
use tracing::{debug, info};

use crate::bucket_aggregate::TimeBuckets;
use crate::cache::SegmentCache;
use crate::cancel::{self, CancelToken};
use crate::catalog::{CATALOG, SCHEMA, StrataCatalog, StrataSchema, VersionedName};
use crate::changes::{Bound, ChangesName};
use crate::dialect::{StrataDialect, marker_tag, tag_markers};
use crate::error::{Error, Result};
use crate::functions::table_functions;
use crate::hooks::{CatalogHooks, DatasetHooks};
use crate::limits;
use crate::overflow;
use crate::plan_cache::{self, Kept, PlanCache};
use crate::provider::{ScanLog, StrataTable};
use crate::run_aggregate::{RunAggregates, SortedFiles};
use crate::statements::{self, Command, VersionAt, quoted};
use crate::views;

/// Limits and parallelism of query execution.
#[derive(Clone, Debug, Default)]
pub struct QueryConfig {
    /// Memory all running queries may hold together, in bytes; operators that can
    /// spill (sorts, aggregations, joins) spill to disk beyond it, the others fail the
    /// query with [`Error::ResourcesExhausted`]. `None`: unlimited.
    pub memory_limit: Option<usize>,
    /// Longest a statement may run, planning included. `None`: no limit.
    pub timeout: Option<Duration>,
    /// Queries running at least this long (to the end of their results) are logged at
    /// `info`; `None`: [`DEFAULT_SLOW_QUERY`].
    pub slow_query: Option<Duration>,
    /// Partitions a scan is split into; 0 means one per core.
    pub target_partitions: usize,
    /// Shards of a table made by `CREATE TABLE` without `WITH (shards = N)`; 0 means
    /// [`statements::DEFAULT_SHARDS`].
    pub default_shards: u32,
    /// The runtime statements are planned and executed on (parsing, planning and
    /// every operator), apart from the caller's. `None`: the caller's runtime. Its
    /// threads should have large stacks (see [`crate::limits`]).
    pub runtime: Option<tokio::runtime::Handle>,
    /// Longest statement accepted, in bytes; 0 means
    /// [`limits::DEFAULT_MAX_STATEMENT_BYTES`].
    pub max_statement_bytes: usize,
    /// Deepest nesting of expressions (and set operations) accepted; 0 means
    /// [`limits::DEFAULT_MAX_DEPTH`].
    pub max_expression_depth: usize,
    /// Bytes of decoded segment columns kept in memory across queries (see
    /// [`crate::cache`]); 0 caches nothing.
    pub cache_bytes: usize,
}

impl QueryConfig {
    fn max_statement_bytes(&self) -> usize {
        match self.max_statement_bytes {
            0 => limits::DEFAULT_MAX_STATEMENT_BYTES,
            n => n,
        }
    }

    fn max_depth(&self) -> usize {
        match self.max_expression_depth {
            0 => limits::DEFAULT_MAX_DEPTH,
            n => n,
        }
    }
}

/// Runs SQL over the datasets of one catalog. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Catalog,
    hooks: Arc<dyn DatasetHooks>,
    config: QueryConfig,
    schema: Arc<StrataSchema>,
    state: SessionState,
    cache: Arc<SegmentCache>,
    /// Physical plans of repeated queries ([`crate::plan_cache`]).
    plans: Arc<PlanCache>,
    /// Recent versions' change rows, shared by subscriptions.
    recent: Arc<crate::subscribe::RecentChanges>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Engine {
    /// An engine that is the only writer of `catalog`.
    pub fn new(catalog: Catalog, config: QueryConfig) -> Result<Self> {
        let hooks = Arc::new(CatalogHooks::new(catalog.clone()));
        Self::with_hooks(catalog, hooks, config)
    }

    /// An engine whose writes go through `hooks` (the server's ingester).
    pub fn with_hooks(
        catalog: Catalog,
        hooks: Arc<dyn DatasetHooks>,
        config: QueryConfig,
    ) -> Result<Self> {
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = config.memory_limit {
            runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(limit)));
        }
        let runtime = runtime.build_arc()?;
        let mut session = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        if config.target_partitions > 0 {
            session = session.with_target_partitions(config.target_partitions);
        }
        let cache = Arc::new(SegmentCache::new(config.cache_bytes));
        session = session.with_extension(cache.clone());
        let strata = Arc::new(StrataCatalog::new(catalog.clone(), hooks.clone()));
        let schema = strata.schema_provider().clone();
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog(CATALOG.to_string(), strata);
        let mut state = SessionStateBuilder::new()
            .with_config(session)
            .with_runtime_env(runtime)
            .with_catalog_list(catalogs)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(RunAggregates))
            .with_physical_optimizer_rule(Arc::new(TimeBuckets))
            .build();
        overflow::install(&mut state)?;
        crate::aggregates::install(&mut state)?;
        let plans = Arc::new(PlanCache::default());
        for (name, f) in table_functions(&catalog, &cache, &plans) {
            state.register_udtf(name, f);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                catalog,
                hooks,
                config,
                schema,
                state,
                cache,
                plans,
                recent: Arc::default(),
            }),
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn config(&self) -> &QueryConfig {
        &self.inner.config
    }

    /// The decoded-column cache every statement's scans share.
    pub fn cache(&self) -> &Arc<SegmentCache> {
        &self.inner.cache
    }

    /// Parses and plans one statement without running it, on the query runtime and
    /// under the statement timeout.
    pub async fn prepare(&self, sql: &str) -> Result<Prepared> {
        self.check_size(sql)?;
        // A repeated query at an unchanged catalog runs the plan it had: nothing to
        // parse or plan, so no need to go over to the query runtime.
        if let Some(kept) = self.kept_plan(sql) {
            return Ok(kept);
        }
        let engine = self.clone();
        let sql = sql.to_string();
        self.within_timeout(self.on_runtime(async move { engine.prepare_inner(&sql).await }))
            .await
    }

    /// Opens up to `max` datasets at their heads — each one's record, version log and
    /// manifest, and its segments' footers and page indexes (into the Parquet metadata
    /// cache, up to half its limit) — on the query runtime, so that the first query of
    /// each after a start finds them in memory as later queries do (on an exclusive
    /// catalog; a shared one resolves the head on every query anyway), and runs the
    /// warm-up statements below. A server calls it once it listens. Returns how many
    /// opened, and the row the warm-up read (for the server to encode as it would a
    /// query's answer); a dataset that fails to open is left for its queries to report.
    pub async fn warm(&self, max: usize) -> Result<Warmed> {
        if !self.inner.catalog.is_exclusive() {
            return Ok(Warmed::default());
        }
        let engine = self.clone();
        let (opened, warm_up) = self
            .on_runtime(async move {
                let names = engine.inner.catalog.list_tables().await?;
                let mut opened = 0;
                let mut warm_up = None;
                for name in names.into_iter().take(max) {
                    let head = VersionedName {
                        dataset: name.clone(),
                        version: VersionSpec::Head,
                    };
                    if let Ok(table) = engine.inner.schema.open(&head).await {
                        opened += 1;
                        warm_up = warm_up.or_else(|| WarmUp::of(&name, &table));
                        // A first scan of a segment reads its footer and page index.
                        if let Err(e) = table.load_segment_metadata(&engine.inner.state).await {
                            debug!(dataset = %name, error = %e, "loading segment footers failed");
                        }
                    }
                }
                Ok((opened, warm_up))
            })
            .await?;
        // One statement down the whole path — parsing, DataFusion's optimizers, physical
        // planning, a scan, a run — so that the first query after a start does not pay
        // for what a process does the first time (~0.6 ms of a cold point query). It
        // reads nothing: no row passes its filter and every segment's statistics say so.
        // Then one that reads a dataset's first row from its segments: the Parquet
        // reader's code (page pruning, a pushed-down filter, decoding each column's
        // encoding) runs for the first time here rather than in the first query that
        // reads a segment (2–3 ms of a cold point query, ~13% of a cold `GROUP BY`).
        // It reads a row group's pages of one segment and keeps nothing. Last, a point
        // lookup of that row by its key (partition key equal, row key in a range): shard
        // pruning, Bloom filters and page-index pruning by key run for the first time
        // here rather than in the first point query (~1.5 ms of a cold one).
        let (mut rows, mut looked_up) = (Vec::new(), 0);
        if let Some(warm_up) = warm_up {
            if let Err(e) = self.collect(&warm_up.none).await {
                debug!(sql = warm_up.none, error = %e, "warm-up statement failed");
            }
            match self.collect_uncached(&warm_up.first, vec![]).await {
                Ok(batches) => rows = batches,
                Err(e) => debug!(sql = warm_up.first, error = %e, "warm-up read failed"),
            }
            if let Some(params) = warm_up.lookup_params(&rows) {
                match self.collect_uncached(&warm_up.lookup, params).await {
                    Ok(found) => looked_up = found.iter().map(RecordBatch::num_rows).sum(),
                    Err(e) => debug!(sql = warm_up.lookup, error = %e, "warm-up lookup failed"),
                }
            }
        }
        Ok(Warmed {
            datasets: opened,
            rows,
            looked_up,
        })
    }

    /// Plans and runs `sql` with `params` bound and the segment cache out of the way:
    /// what it reads is neither served from the cache nor kept in it, and no fill is
    /// queued.
    async fn collect_uncached(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<Vec<RecordBatch>> {
        let (mut state, _) = self.session();
        state
            .config_mut()
            .set_extension(Arc::new(SegmentCache::new(0)));
        let sql = sql.to_string();
        self.on_runtime(async move {
            let plan = bind(state.create_logical_plan(&sql).await?, params)?;
            let physical = state.create_physical_plan(&plan).await?;
            Ok(datafusion::physical_plan::collect(physical, state.task_ctx()).await?)
        })
        .await
    }

    /// Refuses a statement longer than the configured limit (cheap: call it before
    /// anything else looks at the text).
    pub fn check_size(&self, sql: &str) -> Result<()> {
        limits::check_size(sql, self.inner.config.max_statement_bytes())
    }

    /// Runs `f` on the query runtime (or here without one); dropping the returned
    /// future aborts it at its next yield point.
    async fn on_runtime<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let Some(runtime) = &self.inner.config.runtime else {
            // Boxed: planning and command futures are large, and this one is polled
            // on the caller's stack.
            return Box::pin(f).await;
        };
        let mut task = AbortOnDrop(runtime.spawn(f));
        match (&mut task.0).await {
            Ok(r) => r,
            Err(e) => Err(Error::Execution(format!(
                "the statement's task failed: {e}"
            ))),
        }
    }

    /// Parses one SQL statement within the statement-shape limits.
    fn parse_one(&self, sql: &str) -> Result<DfStatement> {
        let max_depth = self.inner.config.max_depth();
        limits::check_tokens(sql, &StrataDialect, max_depth)?;
        let mut parsed = DFParserBuilder::new(sql)
            .with_dialect(&StrataDialect)
            .build()?
            .parse_statements()?;
        let mut statement = match (parsed.pop_front(), parsed.is_empty()) {
            (Some(s), true) => s,
            (None, _) => return Err(Error::Sql("empty statement".into())),
            (Some(_), false) => {
                for mut s in parsed {
                    limits::check_depth(&mut s, max_depth)?;
                }
                return Err(Error::Unsupported(
                    "several statements in one request; send them one at a time".into(),
                ));
            }
        };
        limits::check_depth(&mut statement, max_depth)?;
        Ok(statement)
    }

    /// Runs one statement and streams its result.
    pub async fn execute(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        self.prepare(sql).await?.execute(vec![]).await
    }

    /// Runs one statement and collects its result.
    pub async fn collect(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let stream = self.execute(sql).await?;
        stream.try_collect().await.map_err(Error::from)
    }

    async fn within_timeout<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        within(self.inner.config.timeout, f).await
    }

    /// A session for one statement to plan and run, with a fresh scan log.
    fn session(&self) -> (SessionState, Arc<ScanLog>) {
        let (mut state, log) = self.run_session();
        // The files this statement's scans read and their sort keys (its own map).
        state
            .config_mut()
            .options_mut()
            .extensions
            .insert(SortedFiles::default());
        (state, log)
    }

    /// A session for one statement whose plan is already made (a kept plan): nothing
    /// for planning, so no copy of the options.
    fn run_session(&self) -> (SessionState, Arc<ScanLog>) {
        let mut state = self.inner.state.clone();
        // The statement's start time: `now()` and friends are fixed to it.
        state.mark_start_execution();
        let log = Arc::new(ScanLog::default());
        state.config_mut().set_extension(log.clone());
        (state, log)
    }

    /// The runtime statements run on: the query runtime, or the caller's.
    pub(crate) fn runtime(&self) -> tokio::runtime::Handle {
        self.inner
            .config
            .runtime
            .clone()
            .unwrap_or_else(tokio::runtime::Handle::current)
    }

    /// Recent versions' change rows, shared by subscriptions.
    pub(crate) fn recent_changes(&self) -> &Arc<crate::subscribe::RecentChanges> {
        &self.inner.recent
    }

    /// A session for one statement of the engine's own (a subscription's step).
    pub(crate) fn statement_state(&self) -> SessionState {
        self.session().0
    }

    /// The plan kept for `sql` ([`crate::plan_cache`]), when there is one at the
    /// catalog's present change count.
    fn kept_plan(&self, sql: &str) -> Option<Prepared> {
        if !self.inner.catalog.is_exclusive() || !plain_query(sql) {
            return None;
        }
        let changes = self.inner.catalog.changes();
        let hit = self
            .inner
            .plans
            .get(sql, changes, self.inner.cache.evictions())?;
        let body = match hit.run {
            Kept::Answer(batch) => Body::Answer {
                plan: hit.logical,
                sql: sql.into(),
                batch,
            },
            Kept::Plan(physical) => {
                let (state, log) = self.run_session();
                Body::Query {
                    plan: hit.logical,
                    state: Box::new(state),
                    log,
                    sql: sql.into(),
                    physical: Some(physical),
                    keep: None,
                }
            }
        };
        Some(Prepared {
            engine: self.clone(),
            changes,
            body,
        })
    }

    async fn prepare_inner(&self, sql: &str) -> Result<Prepared> {
        let text: Arc<str> = sql.into();
        // Read before planning: a change made while planning makes the plan stale.
        let changes = self.inner.catalog.changes();
        // The list of dataset names serves `information_schema`, `SHOW TABLES` and DDL's
        // existence checks; a query's table lookups go to storage anyway. A query that
        // cannot name the listing skips reading it.
        let plain_query = plain_query(sql);
        if !plain_query {
            self.inner.schema.refresh().await?;
        }
        let keep_plans = plain_query && self.inner.catalog.is_exclusive();
        // Strata's own statements read tags themselves: parse them before markers.
        if let Some(cmd) = statements::parse_custom(sql)? {
            return Ok(self.command(cmd, changes));
        }
        let (sql, tags) = tag_markers(sql);
        let mut statement = self.parse_one(&sql)?;
        match &statement {
            DfStatement::Statement(s) => {
                let shards = match self.inner.config.default_shards {
                    0 => statements::DEFAULT_SHARDS,
                    n => n,
                };
                if let Some(mut cmd) = statements::from_statement(s, shards)? {
                    if let Command::Merge(m) = &mut cmd {
                        m.tags = tags;
                    }
                    return Ok(self.command(cmd, changes));
                }
            }
            DfStatement::Explain(_) => {}
            DfStatement::CreateExternalTable(_) | DfStatement::CopyTo(_) => {
                return Err(Error::Unsupported(
                    "CREATE EXTERNAL TABLE and COPY: the server does not read or write its own files".into(),
                ));
            }
            other => return Err(Error::Unsupported(format!("{other}"))),
        }
        self.rewrite_versions(&mut statement, &tags).await?;
        let (state, log) = self.session();
        let plan = state.statement_to_plan(statement).await?;
        check_plan(&plan)?;
        let plan = views::plain_output(plan)?;
        debug!(plan = %plan.display_indent(), "planned");
        let keep = (keep_plans && plan_cache::reusable_statement(&text, &plan))
            .then(|| self.inner.cache.evictions());
        Ok(Prepared {
            engine: self.clone(),
            changes,
            body: Body::Query {
                plan,
                state: Box::new(state),
                log,
                sql: text,
                physical: None,
                keep,
            },
        })
    }

    fn command(&self, cmd: Command, changes: u64) -> Prepared {
        Prepared {
            engine: self.clone(),
            changes,
            body: Body::Command(cmd),
        }
    }

    /// Replaces `t VERSION AS OF …` / `TIMESTAMP AS OF …` / `FOR SYSTEM_TIME AS OF …`
    /// by the versioned table name the catalog resolves.
    async fn rewrite_versions(&self, statement: &mut DfStatement, tags: &[String]) -> Result<()> {
        // Pass 1: the timestamp expressions, which must be evaluated.
        let mut finder = Versions {
            tags,
            timestamps: None,
            found: vec![],
            error: None,
        };
        visit(statement, &mut finder);
        if let Some(e) = finder.error {
            return Err(e);
        }
        if finder.found.is_empty() {
            return Ok(());
        }
        let mut timestamps = Vec::new();
        for text in finder.found.iter().filter_map(|f| f.as_ref()) {
            timestamps.push(self.eval_timestamp(text).await?);
        }
        // Pass 2: rename.
        let mut rewriter = Versions {
            tags,
            timestamps: Some(timestamps.into_iter()),
            found: vec![],
            error: None,
        };
        visit(statement, &mut rewriter);
        rewriter.error.map_or(Ok(()), Err)
    }

    /// Plans a statement of the engine's own making, with `VERSION AS OF` (and the
    /// tags of `tags`) resolved as in a client's statement.
    pub(crate) async fn plan_sql(
        &self,
        sql: &str,
        tags: &[String],
    ) -> Result<(SessionState, LogicalPlan)> {
        let mut statement = self.parse_one(sql)?;
        self.rewrite_versions(&mut statement, tags).await?;
        let (state, _) = self.session();
        let plan = state.statement_to_plan(statement).await?;
        check_plan(&plan)?;
        Ok((state, plan))
    }

    /// Milliseconds since the epoch of a SQL timestamp expression (a naive timestamp
    /// is UTC).
    async fn eval_timestamp(&self, text: &str) -> Result<i64> {
        let sql = format!("SELECT CAST(to_timestamp_millis({text}) AS BIGINT)");
        let (state, _) = self.session();
        let not_a_timestamp =
            |e: Error| Error::plan(format!("TIMESTAMP AS OF {text}: not a timestamp ({e})"));
        let statement = self.parse_one(&sql).map_err(not_a_timestamp)?;
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| not_a_timestamp(e.into()))?;
        let batches = DataFrame::new(state, plan)
            .collect()
            .await
            .map_err(|e| not_a_timestamp(e.into()))?;
        let value = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>().cloned())
            .filter(|a| !a.is_null(0))
            .map(|a| a.value(0));
        value.ok_or_else(|| Error::plan(format!("TIMESTAMP AS OF {text}: the timestamp is null")))
    }

    /// Runs a command and answers its one row.
    async fn run(&self, cmd: &Command) -> Result<RecordBatch> {
        let catalog = &self.inner.catalog;
        let hooks = &self.inner.hooks;
        let name = cmd.dataset();
        let exists = catalog.list_tables().await?.iter().any(|n| n == name);
        let open = || async {
            if exists {
                catalog.open_table(name).await.map_err(Error::from)
            } else {
                Err(strata_table::Error::DatasetNotFound(name.to_string()).into())
            }
        };
        let (version, rows) = match cmd {
            Command::CreateTable {
                spec,
                if_not_exists,
            } => {
                if exists && *if_not_exists {
                    (None, None)
                } else {
                    let table = hooks
                        .create_dataset(spec.clone())
                        .await
                        .map_err(Error::Hook)?;
                    (Some(table.head_version().await?), None)
                }
            }
            Command::DropTable { if_exists, .. } => {
                if exists {
                    hooks.drop_dataset(name).await.map_err(Error::Hook)?;
                } else if !*if_exists {
                    return Err(strata_table::Error::DatasetNotFound(name.to_string()).into());
                }
                (None, None)
            }
            Command::AddColumn {
                field,
                if_not_exists,
                ..
            } => {
                let table = open().await?;
                let head = table.head().await?;
                if *if_not_exists && head.schema.field_with_name(field.name()).is_ok() {
                    (None, None)
                } else {
                    hooks.before_commit(name).await.map_err(Error::Hook)?;
                    let info = table.add_column(field.clone()).await?;
                    hooks.schema_changed(name).await.map_err(Error::Hook)?;
                    (Some(info.version), None)
                }
            }
            Command::Update {
                assignments,
                selection,
                ..
            } => {
                let table = open().await?;
                hooks.before_commit(name).await.map_err(Error::Hook)?;
                match self
                    .update(&table, assignments, selection.as_deref())
                    .await?
                {
                    Some((info, rows)) => (Some(info.version), Some(rows)),
                    None => (None, Some(0)),
                }
            }
            Command::Merge(m) => {
                let table = open().await?;
                hooks.before_commit(name).await.map_err(Error::Hook)?;
                match self.merge(&table, m).await? {
                    Some((info, rows)) => (Some(info.version), Some(rows)),
                    None => (None, Some(0)),
                }
            }
            Command::Delete { selection, .. } => {
                let table = open().await?;
                hooks.before_commit(name).await.map_err(Error::Hook)?;
                let info = self.delete(&table, selection.as_deref()).await?;
                (Some(info.version), Some(info.rows_removed))
            }
            Command::Restore { to, .. } => {
                let table = open().await?;
                let spec = match to {
                    VersionAt::Spec(s) => s.clone(),
                    VersionAt::Timestamp(text) => {
                        VersionSpec::Timestamp(self.eval_timestamp(text).await?)
                    }
                };
                // Rows acknowledged before the RESTORE are committed first, so a bad
                // load still in memory is rolled back with the rest.
                hooks.before_commit(name).await.map_err(Error::Hook)?;
                let info = table.rollback(&spec).await?;
                hooks.schema_changed(name).await.map_err(Error::Hook)?;
                (Some(info.version), None)
            }
            Command::CreateTag { tag, version, .. } => {
                let table = open().await?;
                let at = version.map_or(VersionSpec::Head, VersionSpec::Version);
                let info = table.create_tag(tag, &at).await?;
                (Some(info.version), None)
            }
            Command::DropTag { tag, if_exists, .. } => {
                let table = open().await?;
                match table.delete_tag(tag).await {
                    Ok(()) => {}
                    Err(strata_table::Error::TagNotFound { .. }) if *if_exists => {}
                    Err(e) => return Err(e.into()),
                }
                (None, None)
            }
            Command::Optimize { .. } => {
                let table = open().await?;
                let info = table.compact().await?;
                (info.map(|i| i.version), None)
            }
            Command::Vacuum { policy, .. } => {
                let table = open().await?;
                let report = table.vacuum(policy).await?;
                (report.version, Some(report.versions_removed))
            }
        };
        info!(
            operation = cmd.operation(),
            dataset = name,
            version,
            rows,
            "statement committed"
        );
        cmd.result(version, rows)
    }

    /// `DELETE FROM table [WHERE selection]` as one commit.
    async fn delete(
        &self,
        table: &Table,
        selection: Option<&str>,
    ) -> Result<strata_table::VersionInfo> {
        let Some(selection) = selection else {
            return Ok(table
                .delete_where(&strata_table::Predicate::And(vec![]))
                .await?);
        };
        let head = table.head_version().await?;
        let at = VersionedName {
            dataset: table.name().to_string(),
            version: VersionSpec::Version(head),
        };
        let sql = format!(
            "SELECT * FROM {} WHERE {selection}",
            quoted(&at.to_table_name())
        );
        let (state, _) = self.session();
        let plan = state.create_logical_plan(&sql).await?;
        let analyzed =
            state
                .analyzer()
                .execute_and_check(plan, state.config_options(), |_, _| {})?;
        let filter = statements::plan_filter(&analyzed)
            .ok_or_else(|| Error::plan(format!("DELETE: cannot plan WHERE {selection}")))?;
        let schema = table.snapshot(&VersionSpec::Version(head)).await?.schema();
        if let Some(p) = statements::to_predicate(&filter, &schema) {
            return Ok(table.delete_where(&p).await?);
        }
        // A condition the table layer cannot evaluate: find the primary keys of the
        // matching rows with DataFusion, then delete those keys.
        if !table.spec().has_row_key() {
            return Err(Error::Unsupported(format!(
                "DELETE … WHERE {selection} on {:?}: without a row key, rows can only be deleted by comparisons of columns with constants (=, <>, <, <=, >, >=, IN, BETWEEN, IS NULL, AND, OR, NOT)",
                table.name()
            )));
        }
        let keys: Vec<String> = table.spec().primary_key().map(quoted).collect();
        // The keys are found at one version and deleted in the version right after it;
        // when another commit came in between (its rows were not looked at), look again.
        let mut head = head;
        let mut attempt = 0;
        loop {
            let at = VersionedName {
                dataset: table.name().to_string(),
                version: VersionSpec::Version(head),
            };
            let sql = format!(
                "SELECT {} FROM {} WHERE {selection}",
                keys.join(", "),
                quoted(&at.to_table_name())
            );
            let (state, _) = self.session();
            let plan = state.create_logical_plan(&sql).await?;
            let frame = DataFrame::new(state, plan);
            let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
            let batches = frame.collect().await?;
            let found = views::plain_batch(&arrow::compute::concat_batches(&schema, &batches)?)?;
            match table.delete_keys_at(&found, Some(head)).await {
                Err(e) if e.is_conflict() && attempt < DELETE_ATTEMPTS => {
                    attempt += 1;
                    head = table.head_version().await?;
                }
                other => return other.map_err(Error::from),
            }
        }
    }
}

/// Times a `DELETE` that finds its keys with a query looks again when commits keep
/// coming in between.
const DELETE_ATTEMPTS: usize = 10;

impl Engine {
    /// `UPDATE table SET … [WHERE …]` as one commit: the matching rows are read at the
    /// head with their new values computed, and written back as upserts on top of that
    /// very version; when another commit came in between, they are read again. `None`
    /// when no row matches (nothing is committed). Key columns cannot be set (a row's key
    /// is its identity: DELETE and INSERT it instead), and a dataset without a row key
    /// has no identity to replace rows by.
    async fn update(
        &self,
        table: &Table,
        assignments: &[(String, String)],
        selection: Option<&str>,
    ) -> Result<Option<(strata_table::VersionInfo, u64)>> {
        let spec = table.spec();
        if !spec.has_row_key() {
            return Err(Error::Unsupported(format!(
                "UPDATE on {:?}: a dataset without a row key has no row identity; DELETE and INSERT instead",
                table.name()
            )));
        }
        let keys: Vec<&str> = spec.primary_key().collect();
        let mut head = table.head_version().await?;
        let mut attempt = 0;
        loop {
            let schema = table.snapshot(&VersionSpec::Version(head)).await?.schema();
            for (column, _) in assignments {
                if schema.field_with_name(column).is_err() {
                    return Err(Error::plan(format!(
                        "UPDATE: {:?} has no column {column:?}",
                        table.name()
                    )));
                }
                if keys.contains(&column.as_str()) {
                    return Err(Error::plan(format!(
                        "UPDATE cannot set the key column {column:?}: a row's key is its identity (DELETE and INSERT the row instead)"
                    )));
                }
            }
            let columns: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| match assignments.iter().find(|(c, _)| c == f.name()) {
                    Some((c, expr)) => format!("({expr}) AS {}", quoted(c)),
                    None => quoted(f.name()),
                })
                .collect();
            let at = VersionedName {
                dataset: table.name().to_string(),
                version: VersionSpec::Version(head),
            };
            let mut sql = format!(
                "SELECT {} FROM {}",
                columns.join(", "),
                quoted(&at.to_table_name())
            );
            if let Some(selection) = selection {
                sql.push_str(&format!(" WHERE {selection}"));
            }
            let (state, _) = self.session();
            let plan = state.create_logical_plan(&sql).await?;
            let batches = DataFrame::new(state, plan).collect().await?;
            // The new values in the columns' own types: an overflow or a bad conversion
            // is an error, not a silent null.
            let exact = arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            };
            let mut rows = Vec::with_capacity(batches.len());
            for b in &batches {
                let b = views::plain_batch(b)?;
                let columns = schema
                    .fields()
                    .iter()
                    .zip(b.columns())
                    .map(|(f, c)| {
                        arrow::compute::cast_with_options(c, f.data_type(), &exact).map_err(|e| {
                            Error::plan(format!("UPDATE: the new values of {:?}: {e}", f.name()))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                rows.push(RecordBatch::try_new(schema.clone(), columns)?);
            }
            let n: u64 = rows.iter().map(|b| b.num_rows() as u64).sum();
            if n == 0 {
                return Ok(None);
            }
            match table
                .write_at(&rows, std::collections::BTreeMap::new(), Some(head))
                .await
            {
                Ok(strata_table::WriteOutcome::Committed(info)) => return Ok(Some((info, n))),
                Ok(strata_table::WriteOutcome::Duplicate { .. }) => {
                    return Err(Error::Execution(
                        "UPDATE: a write without producer marks was taken for a duplicate".into(),
                    ));
                }
                Err(e) if e.is_conflict() && attempt < DELETE_ATTEMPTS => {
                    attempt += 1;
                    head = table.head_version().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Refuses plans Strata does not run: DataFusion's in-memory DDL (tables, views,
/// schemas that would vanish after the statement) and writes to files.
fn check_plan(plan: &LogicalPlan) -> Result<()> {
    match plan {
        LogicalPlan::Ddl(d) => Err(Error::Unsupported(match d {
            DdlStatement::CreateMemoryTable(_) => {
                "CREATE TABLE … AS SELECT: create the table with its PRIMARY KEY, then INSERT INTO … SELECT".to_string()
            }
            other => format!("{}", other.display()),
        })),
        LogicalPlan::Copy(_) => Err(Error::Unsupported("COPY".into())),
        LogicalPlan::Statement(s) => Err(Error::Unsupported(format!(
            "{}: each statement runs in its own session",
            s.name()
        ))),
        _ => Ok(()),
    }
}

/// Applies a visitor to the SQL statements inside a DataFusion statement.
fn visit(statement: &mut DfStatement, v: &mut Versions<'_>) {
    match statement {
        DfStatement::Statement(s) => {
            let _ = s.visit(v);
        }
        DfStatement::Explain(e) => visit(&mut e.statement, v),
        _ => {}
    }
}

/// Finds (pass 1) or rewrites (pass 2) versioned table references.
struct Versions<'a> {
    tags: &'a [String],
    /// Pass 2: evaluated `TIMESTAMP AS OF` values, in visiting order.
    timestamps: Option<std::vec::IntoIter<i64>>,
    /// Pass 1: one entry per versioned reference, the timestamp expression if any.
    found: Vec<Option<String>>,
    error: Option<Error>,
}

impl Versions<'_> {
    fn version(&mut self, v: &TableVersion) -> Result<VersionAtRef> {
        match v {
            TableVersion::VersionAsOf(SqlExpr::Value(value)) => match &value.value {
                SqlValue::Number(n, _) => {
                    if let Some(tag) = marker_tag(n, self.tags) {
                        return Ok(VersionAtRef::Spec(VersionSpec::Tag(tag.to_string())));
                    }
                    n.parse::<u64>()
                        .map(|n| VersionAtRef::Spec(VersionSpec::Version(n)))
                        .map_err(|_| {
                            Error::plan(format!(
                                "VERSION AS OF {n}: expected a version number (1, 2, …) or a tag name"
                            ))
                        })
                }
                SqlValue::Placeholder(p) => Err(Error::Unsupported(format!(
                    "a parameter ({p}) in VERSION AS OF; give the version in the SQL text"
                ))),
                other => Err(Error::plan(format!(
                    "VERSION AS OF {other}: expected a version number or a tag name"
                ))),
            },
            TableVersion::TimestampAsOf(e) | TableVersion::ForSystemTimeAsOf(e) => {
                Ok(VersionAtRef::Timestamp(e.to_string()))
            }
            other => Err(Error::Unsupported(format!("table version clause {other}"))),
        }
    }
}

enum VersionAtRef {
    Spec(VersionSpec),
    Timestamp(String),
}

/// The change feed's table function, rewritten to a table name ([`crate::changes`]).
const TABLE_CHANGES: &str = "table_changes";

impl Versions<'_> {
    /// Pass 1: records the call (and its time arguments, to evaluate). Pass 2: the table
    /// name that reads the changes.
    fn table_changes(&mut self, args: &[ast::FunctionArg]) -> Result<Option<String>> {
        let usage = || {
            Error::plan(
                "usage: table_changes('dataset', from [, to]) where from and to are a version \
                 number, a tag ('name') or a time (TIMESTAMP '…')"
                    .to_string(),
            )
        };
        if !(2..=3).contains(&args.len()) {
            return Err(usage());
        }
        let mut exprs = Vec::with_capacity(3);
        for arg in args {
            match arg {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => exprs.push(e),
                _ => return Err(usage()),
            }
        }
        let dataset = match exprs[0] {
            SqlExpr::Value(v) => match &v.value {
                SqlValue::SingleQuotedString(s) => s.clone(),
                _ => return Err(usage()),
            },
            _ => return Err(usage()),
        };
        let mut bounds = Vec::with_capacity(2);
        for e in &exprs[1..] {
            bounds.push(match e {
                SqlExpr::Value(v) => match &v.value {
                    SqlValue::Number(n, _) => Bound::Version(n.parse().map_err(|_| {
                        Error::plan(format!("table_changes: {n} is not a version number"))
                    })?),
                    SqlValue::SingleQuotedString(tag) => Bound::Tag(tag.clone()),
                    SqlValue::Placeholder(p) => {
                        return Err(Error::Unsupported(format!(
                            "a parameter ({p}) in table_changes; give the versions in the SQL text"
                        )));
                    }
                    _ => return Err(usage()),
                },
                // A time: evaluated between the passes.
                other => Bound::Time(match self.timestamps.as_mut() {
                    None => {
                        self.found.push(Some(other.to_string()));
                        0
                    }
                    Some(ts) => ts
                        .next()
                        .ok_or_else(|| Error::Execution("timestamp versions out of step".into()))?,
                }),
            });
        }
        if self.timestamps.is_none() {
            // Pass 2 must run even when no argument is a time.
            self.found.push(None);
            return Ok(None);
        }
        let to = bounds.get(1).cloned().unwrap_or(Bound::Head);
        Ok(Some(
            ChangesName {
                dataset,
                from: bounds.swap_remove(0),
                to,
            }
            .to_table_name(),
        ))
    }
}

impl VisitorMut for Versions<'_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name,
            args: Some(args),
            ..
        } = factor
            && name.0.len() == 1
            && name.to_string().eq_ignore_ascii_case(TABLE_CHANGES)
        {
            let renamed = match self.table_changes(&args.args) {
                Ok(Some(renamed)) => renamed,
                Ok(None) => return ControlFlow::Continue(()),
                Err(e) => {
                    self.error = Some(e);
                    return ControlFlow::Break(());
                }
            };
            if let TableFactor::Table { name, args, .. } = factor {
                *name = ast::ObjectName::from(vec![ast::Ident::with_quote('"', renamed)]);
                *args = None;
            }
            return ControlFlow::Continue(());
        }
        let TableFactor::Table { name, version, .. } = factor else {
            return ControlFlow::Continue(());
        };
        let Some(v) = version.as_ref() else {
            return ControlFlow::Continue(());
        };
        let at = match self.version(v) {
            Ok(at) => at,
            Err(e) => {
                self.error = Some(e);
                return ControlFlow::Break(());
            }
        };
        let Some(timestamps) = self.timestamps.as_mut() else {
            self.found.push(match at {
                VersionAtRef::Timestamp(t) => Some(t),
                VersionAtRef::Spec(_) => None,
            });
            return ControlFlow::Continue(());
        };
        let spec = match at {
            VersionAtRef::Spec(s) => s,
            VersionAtRef::Timestamp(_) => match timestamps.next() {
                Some(ms) => VersionSpec::Timestamp(ms),
                None => {
                    self.error = Some(Error::Execution("timestamp versions out of step".into()));
                    return ControlFlow::Break(());
                }
            },
        };
        let Some(ast::ObjectNamePart::Identifier(last)) = name.0.last_mut() else {
            self.error = Some(Error::plan(format!("invalid table name {name}")));
            return ControlFlow::Break(());
        };
        let dataset = if last.quote_style.is_some() {
            last.value.clone()
        } else {
            last.value.to_ascii_lowercase()
        };
        let versioned = VersionedName {
            dataset,
            version: spec,
        };
        *last = ast::Ident::with_quote('"', versioned.to_table_name());
        *version = None;
        ControlFlow::Continue(())
    }
}

/// What a statement does, from least to most: the role a caller needs to run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Queries, listings, `EXPLAIN`.
    Read,
    /// Rows in and out: `INSERT`, `DELETE`, ingestion, flush, compaction.
    Write,
    /// Datasets and their history: `CREATE`/`DROP`/`ALTER`, `RESTORE` (rollback),
    /// tags, `VACUUM`.
    Admin,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        })
    }
}

/// A planned statement, ready to run (several times, with different parameters).
pub struct Prepared {
    engine: Engine,
    /// The catalog's change count when planning began.
    changes: u64,
    body: Body,
}

enum Body {
    Query {
        plan: LogicalPlan,
        state: Box<SessionState>,
        log: Arc<ScanLog>,
        /// The statement as given, for the slow-query log (and the plan cache's key).
        sql: Arc<str>,
        /// The kept physical plan of this statement, when it had one.
        physical: Option<Arc<dyn ExecutionPlan>>,
        /// When the physical plan made at execution may be kept: the column cache's
        /// eviction count before planning.
        keep: Option<u64>,
    },
    /// A kept query whose plan was a row of literals ([`crate::plan_cache`]): its answer.
    Answer {
        plan: LogicalPlan,
        sql: Arc<str>,
        batch: RecordBatch,
    },
    Command(Command),
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.body {
            Body::Query { plan, .. } | Body::Answer { plan, .. } => {
                write!(f, "Prepared({})", plan.display())
            }
            Body::Command(c) => write!(f, "Prepared({c:?})"),
        }
    }
}

impl Prepared {
    /// True while nothing changed through the engine's catalog since this statement was
    /// planned (no commit, tag, vacuum, dataset created or dropped in this process):
    /// running the plan then reads what planning again would.
    pub fn is_current(&self) -> bool {
        self.engine.catalog().changes() == self.changes
    }

    /// The schema of the result.
    pub fn schema(&self) -> SchemaRef {
        match &self.body {
            Body::Query { plan, .. } | Body::Answer { plan, .. } => {
                Arc::new(plan.schema().as_arrow().clone())
            }
            Body::Command(_) => Command::result_schema(),
        }
    }

    /// What the statement needs of its caller: reading, writing rows, or changing
    /// datasets and their history.
    pub fn access(&self) -> Access {
        match &self.body {
            Body::Query {
                plan: LogicalPlan::Dml(_),
                ..
            } => Access::Write,
            Body::Query { .. } | Body::Answer { .. } => Access::Read,
            Body::Command(c) => match c {
                Command::Delete { .. }
                | Command::Update { .. }
                | Command::Merge(_)
                | Command::Optimize { .. } => Access::Write,
                Command::CreateTable { .. }
                | Command::DropTable { .. }
                | Command::AddColumn { .. }
                | Command::Restore { .. }
                | Command::CreateTag { .. }
                | Command::DropTag { .. }
                | Command::Vacuum { .. } => Access::Admin,
            },
        }
    }

    /// True for statements that read (`SELECT`, `EXPLAIN`, `SHOW`), false for those
    /// that write or change the catalog.
    pub fn is_query(&self) -> bool {
        match &self.body {
            Body::Query { plan, .. } => !matches!(plan, LogicalPlan::Dml(_)),
            Body::Answer { .. } => true,
            Body::Command(_) => false,
        }
    }

    /// The parameters (`$1`, `$2`, …) in order, with their types where the planner
    /// could infer them.
    pub fn parameters(&self) -> Result<Vec<(String, Option<DataType>)>> {
        let (Body::Query { plan, .. } | Body::Answer { plan, .. }) = &self.body else {
            return Ok(vec![]);
        };
        // Strings are views inside the engine; clients bind the plain types.
        let mut params: Vec<(String, Option<DataType>)> = plan
            .get_parameter_types()?
            .into_iter()
            .map(|(name, dt)| {
                let dt = dt.map(|dt| views::plain_type(&dt).unwrap_or(dt));
                (name, dt)
            })
            .collect();
        params.sort_by_key(|(name, _)| {
            name.trim_start_matches('$')
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        Ok(params)
    }

    /// Runs the statement with positional parameter values.
    pub async fn execute(&self, params: Vec<ScalarValue>) -> Result<SendableRecordBatchStream> {
        self.execute_within(params, None).await
    }

    /// Runs the statement, stopping it at the statement timeout or after `deadline`
    /// (the client's own, from its request), whichever comes first.
    pub async fn execute_within(
        &self,
        params: Vec<ScalarValue>,
        deadline: Option<Duration>,
    ) -> Result<SendableRecordBatchStream> {
        let engine = &self.engine;
        let config = &engine.inner.config;
        let timeout = shorter(config.timeout, deadline);
        // Background cache fills wait while this query runs (until its stream is dropped).
        let running = engine.inner.cache.running();
        let sql_text: Arc<str>;
        let (plan, state, log, physical, keep) = match &self.body {
            Body::Command(cmd) => {
                let (engine2, cmd) = (engine.clone(), cmd.clone());
                let run = engine.on_runtime(async move { engine2.run(&cmd).await });
                let batch = within(timeout, run).await?;
                return Ok(one_batch(batch));
            }
            Body::Answer { batch, .. } if params.is_empty() => return Ok(one_batch(batch.clone())),
            // Values given anyway are bound (and refused) by planning, as for a kept plan.
            Body::Answer { plan, sql, .. } => {
                sql_text = sql.clone();
                let (state, log) = engine.session();
                (plan.clone(), state, log, None, None)
            }
            Body::Query {
                plan,
                state,
                log,
                sql,
                physical,
                keep,
            } => {
                sql_text = sql.clone();
                // Kept plans have no parameters; values given anyway are bound (and
                // refused) by planning as usual.
                let (physical, keep) = if params.is_empty() {
                    (physical.clone(), *keep)
                } else {
                    (None, None)
                };
                let keep = keep.map(|evictions| {
                    let plans = self.engine.inner.plans.clone();
                    (plans, sql.clone(), (self.changes, evictions))
                });
                (
                    plan.clone(),
                    state.as_ref().clone(),
                    log.clone(),
                    physical,
                    keep,
                )
            }
        };
        let runtime = config.runtime.clone();
        let token = CancelToken::new(timeout);
        let run = {
            let token = token.clone();
            async move {
                let physical = match physical {
                    Some(p) => p,
                    None => {
                        let plan = bind(plan, params)?;
                        let physical = state.create_physical_plan(&plan).await?;
                        if let Some((plans, sql, counts)) = keep {
                            plans.keep(sql, counts, &plan, &physical);
                        }
                        physical
                    }
                };
                run_query(physical, log, state, token).await
            }
        };
        let start = tokio::time::Instant::now();
        let runtime = runtime.unwrap_or_else(tokio::runtime::Handle::current);
        let stream = within(timeout, spawn_query(&runtime, run, token)).await?;
        let slow = config.slow_query.unwrap_or(DEFAULT_SLOW_QUERY);
        let mut timing = QueryTiming {
            sql: sql_text,
            started: std::time::Instant::now(),
            rows: 0,
            slow,
        };
        // The plan announced its schema (Flight SQL sends it before the rows, and
        // clients check the rows against it); a physical plan may have tightened it: an
        // aggregate answered from statistics is a literal, not nullable. Rows are
        // relabelled with the announced schema whenever it admits them.
        let announced = self.schema();
        let relabel = announced != stream.schema() && announced.contains(&stream.schema());
        let schema = if relabel {
            announced.clone()
        } else {
            stream.schema()
        };
        let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream
                .map(move |batch| match batch {
                    Ok(b) if relabel => b.with_schema(announced.clone()).map_err(Into::into),
                    other => other,
                })
                .inspect(move |batch| {
                    let _ = &running;
                    // The whole of `timing` lives in the closure: it logs when the stream goes.
                    let timing = &mut timing;
                    if let Ok(b) = batch {
                        timing.rows += b.num_rows() as u64;
                    }
                }),
        ));
        Ok(match timeout {
            Some(t) => Box::pin(Deadline {
                schema: stream.schema(),
                inner: stream,
                sleep: Box::pin(tokio::time::sleep_until(start + t)),
                timeout: t,
                done: false,
            }),
            None => stream,
        })
    }
}

/// What [`Engine::warm`] did.
#[derive(Debug, Default)]
pub struct Warmed {
    /// Datasets opened.
    pub datasets: usize,
    /// The first row of one dataset, every column, as its warm-up read it (none when
    /// no dataset has rows or a key type the warm-up can bound).
    pub rows: Vec<RecordBatch>,
    /// The rows the warm-up's point lookup of that row's key found (as many as share
    /// its key's range; 0 when it did not run).
    pub looked_up: usize,
}

/// A query's statement taking at least this long is logged at `info` (the rest at
/// `debug`), unless [`QueryConfig::slow_query`] says otherwise.
pub const DEFAULT_SLOW_QUERY: Duration = Duration::from_secs(1);

/// The statements [`Engine::warm`] runs over one dataset.
struct WarmUp {
    /// Every column of the rows whose first key column is below any value of its type,
    /// which segment statistics exclude before a file is opened: reads nothing.
    none: String,
    /// Every column of the rows whose first key column is at least that bound, which no
    /// statistics exclude (so the filter is evaluated on decoded rows), `LIMIT 1`.
    first: String,
    /// Every column of the rows whose partition key equals `$1, $2, …` and whose first
    /// row key column lies between the next parameter and itself: bound to the key of
    /// the row `first` read.
    lookup: String,
    /// The key columns `lookup`'s parameters come from, in order.
    lookup_columns: Vec<String>,
}

impl WarmUp {
    /// `None` for key types without a lower bound in SQL.
    fn of(name: &str, table: &StrataTable) -> Option<WarmUp> {
        let key = table.sort_key().first()?.clone();
        let schema = table.snapshot().schema();
        let bound = match schema.field_with_name(&key).ok()?.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "''".to_string(),
            DataType::Int64 => (i64::MIN + 1).to_string(),
            _ => return None,
        };
        let spec = table.snapshot().table().spec();
        let mut lookup_columns = spec.partition_key.clone();
        let mut conditions: Vec<String> = lookup_columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = ${}", quoted(c), i + 1))
            .collect();
        if let Some(row_key) = spec.row_key.first() {
            let n = lookup_columns.len() + 1;
            let c = quoted(row_key);
            conditions.push(format!("{c} >= ${n} AND {c} <= ${n}"));
            lookup_columns.push(row_key.clone());
        }
        let (name, key) = (quoted(name), quoted(&key));
        Some(WarmUp {
            none: format!("SELECT * FROM {name} WHERE {key} < {bound}"),
            first: format!("SELECT * FROM {name} WHERE {key} >= {bound} LIMIT 1"),
            lookup: format!("SELECT * FROM {name} WHERE {}", conditions.join(" AND ")),
            lookup_columns,
        })
    }

    /// `lookup`'s parameters: the key of the first row of `rows` (`None` without a row,
    /// or where a key column is null).
    fn lookup_params(&self, rows: &[RecordBatch]) -> Option<Vec<ScalarValue>> {
        let batch = rows.iter().find(|b| b.num_rows() > 0)?;
        self.lookup_columns
            .iter()
            .map(|c| {
                let value = ScalarValue::try_from_array(batch.column_by_name(c)?, 0).ok()?;
                (!value.is_null()).then_some(value)
            })
            .collect()
    }
}

/// Logs a query when its result stream is dropped (finished, failed or cancelled).
struct QueryTiming {
    sql: Arc<str>,
    started: std::time::Instant,
    rows: u64,
    slow: Duration,
}

impl Drop for QueryTiming {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        // Long statements are cut: the log is for finding them, not storing them.
        let sql: String = self.sql.chars().take(1000).collect();
        let elapsed_ms = elapsed.as_millis() as u64;
        if elapsed >= self.slow {
            info!(sql, rows = self.rows, elapsed_ms, "slow query");
        } else {
            debug!(sql, rows = self.rows, elapsed_ms, "query done");
        }
    }
}

/// `f`, cut off with [`Error::Timeout`] after `timeout`.
async fn within<T>(timeout: Option<Duration>, f: impl Future<Output = Result<T>>) -> Result<T> {
    match timeout {
        Some(t) => tokio::time::timeout(t, f)
            .await
            .unwrap_or(Err(Error::Timeout(t))),
        None => f.await,
    }
}

/// The shorter of two optional limits.
fn shorter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `plan` with its parameters bound.
fn bind(plan: LogicalPlan, params: Vec<ScalarValue>) -> Result<LogicalPlan> {
    if params.is_empty() {
        return Ok(plan);
    }
    // A plain value where the plan expects its view (see `parameters`).
    let expected = plan.get_parameter_types()?;
    let params = params
        .into_iter()
        .enumerate()
        .map(|(i, v)| match expected.get(&format!("${}", i + 1)) {
            Some(Some(dt)) if views::plain_type(dt).as_ref() == Some(&v.data_type()) => {
                v.cast_to(dt)
            }
            _ => Ok(v),
        })
        .collect::<DfResult<Vec<_>>>()?;
    Ok(plan.with_param_values(params)?)
}

/// True for a `SELECT` or `WITH` that cannot name `information_schema` or `SHOW`: it
/// needs no listing of the datasets, and its plan may be kept.
fn plain_query(sql: &str) -> bool {
    let lower = sql.trim_start().to_ascii_lowercase();
    (lower.starts_with("select") || lower.starts_with("with"))
        && !lower.contains("information_schema")
        && !lower.contains("show")
}

/// Starts a physical plan.
async fn run_query(
    physical: Arc<dyn ExecutionPlan>,
    log: Arc<ScanLog>,
    state: SessionState,
    token: Arc<CancelToken>,
) -> Result<SendableRecordBatchStream> {
    let explain = matches!(physical.name(), "ExplainExec" | "AnalyzeExec");
    let physical = cancel::wrap(physical, &token)?;
    let stream = execute_stream(physical, state.task_ctx())?;
    if !explain {
        return Ok(stream);
    }
    // EXPLAIN [ANALYZE]: add what Strata's scans pruned.
    let schema = stream.schema();
    let mut batches: Vec<RecordBatch> = stream.try_collect().await?;
    let scans = log.entries();
    if !scans.is_empty() && schema.fields().len() == 2 {
        let kinds: Vec<&str> = scans.iter().map(|_| "strata_scan").collect();
        let lines: Vec<String> = scans.iter().map(|s| s.to_string()).collect();
        batches.push(RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(kinds)),
                Arc::new(StringArray::from(lines)),
            ],
        )?);
    }
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter(batches.into_iter().map(Ok)),
    )))
}

/// Starts a query (`start`: physical planning, then the stream) in a task of its own
/// on `runtime`; its batches come back through a short channel.
///
/// - On its own runtime (`QueryConfig::runtime`), a query's computation never holds a
///   thread of the caller's runtime (the server's, which also acknowledges ingestion).
/// - One poll of a DataFusion stream can compute for a long time without yielding (a
///   nested loop join whose filter never matches, for one): a deadline checked between
///   polls of the stream itself would wait for it; polled from here it fires on time.
///
/// Dropping the returned stream (or this future) aborts the task at its next yield point.
async fn spawn_query(
    runtime: &tokio::runtime::Handle,
    start: impl Future<Output = Result<SendableRecordBatchStream>> + Send + 'static,
    token: Arc<CancelToken>,
) -> Result<SendableRecordBatchStream> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<Result<SchemaRef>>();
    let (tx, rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
    let task = QueryTask(
        Some(token),
        Some(runtime.spawn(async move {
            let mut stream = match start.await {
                Ok(s) => s,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            if started_tx.send(Ok(stream.schema())).is_err() {
                return;
            }
            while let Some(batch) = stream.next().await {
                if tx.send(batch).await.is_err() {
                    break; // the consumer is gone
                }
            }
        })),
    );
    let schema = match started_rx.await {
        Ok(started) => started?,
        Err(_) => return Err(task.failure().await),
    };
    let batches = futures::stream::unfold((rx, Some(task)), |(mut rx, task)| async move {
        match rx.recv().await {
            Some(item) => Some((item, (rx, task))),
            // The sender is gone: the end, unless the task died on the way.
            None => task?
                .end()
                .await
                .map(|e| (Err(DataFusionError::from(e)), (rx, None))),
        }
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
}

/// A running query's task; cancelled when dropped: its token trips (so a plan that
/// never yields stops at its next batch) and the task is aborted (so one that waits
/// stops now).
struct QueryTask(
    Option<Arc<CancelToken>>,
    Option<tokio::task::JoinHandle<()>>,
);

impl QueryTask {
    /// Waits for the task; the error if it panicked (or was cancelled from outside).
    async fn end(mut self) -> Option<Error> {
        self.0 = None; // it ended by itself: nothing to cancel
        let handle = self.1.take()?;
        handle
            .await
            .err()
            .map(|e| Error::Execution(format!("the query's task failed: {e}")))
    }

    /// Why a task ended without saying so.
    async fn failure(self) -> Error {
        self.end()
            .await
            .unwrap_or_else(|| Error::Execution("the query's task ended before it started".into()))
    }
}

impl Drop for QueryTask {
    fn drop(&mut self) {
        if let Some(token) = &self.0 {
            token.cancel();
        }
        if let Some(handle) = &self.1 {
            handle.abort();
        }
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn one_batch(batch: RecordBatch) -> SendableRecordBatchStream {
    Box::pin(RecordBatchStreamAdapter::new(
        batch.schema(),
        futures::stream::once(async move { Ok(batch) }),
    ))
}

/// Ends a result stream with [`Error::Timeout`] at its deadline; dropping the inner
/// stream cancels the query's remaining work.
struct Deadline {
    schema: SchemaRef,
    inner: SendableRecordBatchStream,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    done: bool,
}

impl Stream for Deadline {
    type Item = datafusion::error::Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            let t = self.timeout;
            return Poll::Ready(Some(Err(DataFusionError::from(Error::Timeout(t)))));
        }
        let next = self.inner.poll_next_unpin(cx);
        if matches!(next, Poll::Ready(None)) {
            self.done = true;
        }
        next
    }
}

impl RecordBatchStream for Deadline {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
