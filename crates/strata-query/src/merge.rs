//! `MERGE INTO target USING source ON … WHEN [NOT] MATCHED …`: one version of upserts
//! and deletes computed from the target's head and any source.
//!
//! ```sql
//! MERGE INTO weather AS w
//! USING fixes AS f                      -- a table (any version), or (subquery) AS f
//! ON w.station = f.station AND w.ts = f.ts
//! WHEN MATCHED AND f.temperature IS NULL THEN DELETE
//! WHEN MATCHED THEN UPDATE SET temperature = f.temperature
//! WHEN NOT MATCHED THEN INSERT (station, ts, temperature) VALUES (f.station, f.ts, f.temperature)
//! WHEN NOT MATCHED BY SOURCE AND w.ts < TIMESTAMP '2020-01-01' THEN DELETE;
//! ```
//!
//! The whole statement is one query, `source LEFT JOIN target` (a `FULL JOIN` when a
//! clause is `NOT MATCHED BY SOURCE`), whose columns are, for each pair, the number
//! of the first clause that applies and the row that clause makes. Its rows are then
//! committed as one version on top of the head they were computed from
//! ([`strata_table::Table::merge_at`]); when another commit came in between, the query
//! runs again. As in the SQL standard, a target row matched by two source rows is an
//! error, and so is any key acted on twice (two inserts of one key). Rows an `INSERT`
//! leaves out are null; an `INSERT` whose key exists (the `ON` condition did not
//! compare keys) replaces that row, as every Strata write does. Key columns cannot be
//! `SET` (a row's key is its identity).

use std::collections::HashSet;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::dataframe::DataFrame;
use datafusion::sql::sqlparser::ast;
use strata_table::segment::KeyCodec;
use strata_table::{Table, VersionSpec};
use strata_types::DatasetSpec;

use crate::catalog::VersionedName;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::statements::{assignments, object_name, quoted};
use crate::views;

/// A parsed `MERGE`, its expressions kept as SQL text.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeCommand {
    pub table: String,
    /// What the statement's expressions call the target (its alias, or its name).
    target_alias: String,
    /// The source as written (a table, with any alias and version, or a subquery).
    source: String,
    /// What the statement's expressions call the source.
    source_alias: String,
    on: String,
    clauses: Vec<When>,
    /// Tags named by `VERSION AS OF 'tag'` in the source (see [`crate::dialect`]).
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
struct When {
    kind: Kind,
    predicate: Option<String>,
    action: Action,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Matched,
    NotMatched,
    NotMatchedBySource,
}

#[derive(Clone, Debug, PartialEq)]
enum Action {
    Update(Vec<(String, String)>),
    Delete,
    /// Columns (empty: all, in the table's order) and their values.
    Insert(Vec<String>, Vec<String>),
}

/// Marks a row of the source and of the target in the join (null on the side a pair
/// lacks).
const SOURCE_MARK: &str = "__strata_merge_source";
const TARGET_MARK: &str = "__strata_merge_target";
/// The number of the clause that applies to a pair (0: none).
const ACTION: &str = "__strata_merge_action";

/// WHEN clauses a `MERGE` may have: its query holds a value per clause and column.
const MAX_CLAUSES: usize = 64;

/// Times a `MERGE` runs its query again when commits keep coming in between.
const ATTEMPTS: usize = 10;

/// The source as SQL: a table's alias after its version (`t VERSION AS OF 3 AS s`;
/// sqlparser prints the alias first, which it does not parse back).
fn source_text(source: &ast::TableFactor) -> String {
    match source {
        ast::TableFactor::Table {
            alias: Some(alias), ..
        } => {
            let mut bare = source.clone();
            if let ast::TableFactor::Table { alias, .. } = &mut bare {
                *alias = None;
            }
            format!("{bare} {alias}")
        }
        other => other.to_string(),
    }
}

impl MergeCommand {
    pub fn parse(m: &ast::Merge) -> Result<Self> {
        if m.output.is_some() {
            return Err(Error::Unsupported("MERGE … OUTPUT".into()));
        }
        let ast::TableFactor::Table {
            name,
            alias,
            version,
            args,
            ..
        } = &m.table
        else {
            return Err(Error::plan("MERGE INTO needs a table name"));
        };
        if version.is_some() || args.is_some() {
            return Err(Error::plan(
                "MERGE applies to the head of a table (no VERSION AS OF)",
            ));
        }
        let table = object_name(name)?;
        let target_alias = match alias {
            Some(a) if !a.columns.is_empty() => {
                return Err(Error::Unsupported("MERGE INTO t AS a(columns)".into()));
            }
            Some(a) => a.name.to_string(),
            None => quoted(&table),
        };
        let source_alias = match &m.source {
            ast::TableFactor::Table { alias: Some(a), .. }
            | ast::TableFactor::Derived { alias: Some(a), .. } => a.name.to_string(),
            ast::TableFactor::Table { name, .. } => quoted(&object_name(name)?),
            ast::TableFactor::Derived { .. } => {
                return Err(Error::plan(
                    "MERGE … USING (subquery) needs an alias: USING (…) AS s",
                ));
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "MERGE … USING {other}: use a table or (subquery) AS s"
                )));
            }
        };
        if source_alias.trim_matches('"') == target_alias.trim_matches('"') {
            return Err(Error::plan(format!(
                "MERGE: the source and the target are both called {target_alias}; give one an alias"
            )));
        }
        if m.clauses.is_empty() {
            return Err(Error::plan("MERGE needs at least one WHEN clause"));
        }
        if m.clauses.len() > MAX_CLAUSES {
            return Err(Error::plan(format!(
                "MERGE takes at most {MAX_CLAUSES} WHEN clauses ({} given)",
                m.clauses.len()
            )));
        }
        let mut clauses = Vec::with_capacity(m.clauses.len());
        for c in &m.clauses {
            let kind = match c.clause_kind {
                ast::MergeClauseKind::Matched => Kind::Matched,
                ast::MergeClauseKind::NotMatched | ast::MergeClauseKind::NotMatchedByTarget => {
                    Kind::NotMatched
                }
                ast::MergeClauseKind::NotMatchedBySource => Kind::NotMatchedBySource,
            };
            let action = match &c.action {
                ast::MergeAction::Update(u) => {
                    if u.update_predicate.is_some() || u.delete_predicate.is_some() {
                        return Err(Error::Unsupported(
                            "UPDATE SET … WHERE / DELETE WHERE in MERGE: put the condition in WHEN MATCHED AND …"
                                .into(),
                        ));
                    }
                    Action::Update(assignments(&u.assignments, "MERGE … UPDATE")?)
                }
                ast::MergeAction::Delete { .. } => Action::Delete,
                ast::MergeAction::Insert(i) => {
                    if i.insert_predicate.is_some() {
                        return Err(Error::Unsupported(
                            "INSERT … WHERE in MERGE: put the condition in WHEN NOT MATCHED AND …"
                                .into(),
                        ));
                    }
                    let ast::MergeInsertKind::Values(values) = &i.kind else {
                        return Err(Error::Unsupported(
                            "MERGE … INSERT ROW: list the values".into(),
                        ));
                    };
                    let [row] = values.rows.as_slice() else {
                        return Err(Error::plan("MERGE … INSERT takes one row of VALUES"));
                    };
                    let mut columns = Vec::with_capacity(i.columns.len());
                    for c in &i.columns {
                        let column = object_name(c)?;
                        if columns.contains(&column) {
                            return Err(Error::plan(format!(
                                "MERGE … INSERT names {column:?} twice"
                            )));
                        }
                        columns.push(column);
                    }
                    let values: Vec<String> = row.iter().map(|e| e.to_string()).collect();
                    if !columns.is_empty() && columns.len() != values.len() {
                        return Err(Error::plan(format!(
                            "MERGE … INSERT names {} column(s) and gives {} value(s)",
                            columns.len(),
                            values.len()
                        )));
                    }
                    Action::Insert(columns, values)
                }
            };
            clauses.push(When {
                kind,
                predicate: c.predicate.as_ref().map(|e| e.to_string()),
                action,
            });
        }
        Ok(MergeCommand {
            table,
            target_alias,
            source: source_text(&m.source),
            source_alias,
            on: m.on.to_string(),
            clauses,
            tags: vec![],
        })
    }

    /// The query that computes the merge against `target` (a versioned table name)
    /// whose columns are `schema`'s: the clause number, then one column per target
    /// column.
    fn query(&self, target: &str, schema: &SchemaRef, keys: &[&str]) -> Result<String> {
        let (t, s) = (&self.target_alias, &self.source_alias);
        let by_source = self
            .clauses
            .iter()
            .any(|c| c.kind == Kind::NotMatchedBySource);
        let conditions: Vec<String> = self
            .clauses
            .iter()
            .map(|c| {
                let side = match c.kind {
                    Kind::Matched => {
                        format!("{t}.{TARGET_MARK} IS NOT NULL AND {s}.{SOURCE_MARK} IS NOT NULL")
                    }
                    Kind::NotMatched => {
                        format!("{t}.{TARGET_MARK} IS NULL AND {s}.{SOURCE_MARK} IS NOT NULL")
                    }
                    Kind::NotMatchedBySource => format!("{s}.{SOURCE_MARK} IS NULL"),
                };
                match &c.predicate {
                    Some(p) => format!("{side} AND ({p})"),
                    None => side,
                }
            })
            .collect();
        let mut action = String::from("CASE");
        for (i, cond) in conditions.iter().enumerate() {
            action.push_str(&format!(" WHEN {cond} THEN {}", i + 1));
        }
        action.push_str(&format!(" ELSE 0 END AS {ACTION}"));
        for c in &self.clauses {
            let named: Vec<&String> = match &c.action {
                Action::Update(a) => a.iter().map(|(c, _)| c).collect(),
                Action::Insert(columns, _) => columns.iter().collect(),
                Action::Delete => vec![],
            };
            for column in named {
                if schema.field_with_name(column).is_err() {
                    return Err(Error::plan(format!(
                        "MERGE: {:?} has no column {column:?}",
                        self.table
                    )));
                }
            }
            if let Action::Update(a) = &c.action
                && let Some((k, _)) = a.iter().find(|(c, _)| keys.contains(&c.as_str()))
            {
                return Err(Error::plan(format!(
                    "MERGE cannot SET the key column {k:?}: a row's key is its identity (DELETE and INSERT the row instead)"
                )));
            }
            if let Action::Insert(columns, values) = &c.action
                && columns.is_empty()
                && values.len() != schema.fields().len()
            {
                return Err(Error::plan(format!(
                    "MERGE … INSERT VALUES gives {} value(s); {:?} has {} columns (or name them: INSERT (a, b) VALUES …)",
                    values.len(),
                    self.table,
                    schema.fields().len()
                )));
            }
        }
        // Two levels, so that each condition and expression is written once (the SQL
        // grows with the statement, not with statement × columns): the inner query
        // numbers the clause and computes every clause's value of every column, the
        // outer picks the values of the clause that applies.
        let mut inner = vec![action];
        let mut outer = vec![ACTION.to_string()];
        for (i, f) in schema.fields().iter().enumerate() {
            let name = f.name();
            let current = format!("{t}.{}", quoted(name));
            let mut case = format!("CASE {ACTION}");
            for (k, c) in self.clauses.iter().enumerate() {
                let value = match &c.action {
                    Action::Update(a) => a
                        .iter()
                        .find(|(col, _)| col == name)
                        .map_or_else(|| current.clone(), |(_, e)| format!("({e})")),
                    Action::Delete => current.clone(),
                    Action::Insert(columns, values) if columns.is_empty() => {
                        format!("({})", values[i])
                    }
                    Action::Insert(columns, values) => columns
                        .iter()
                        .position(|col| col == name)
                        .map_or_else(|| "NULL".to_string(), |p| format!("({})", values[p])),
                };
                let v = format!("__strata_merge_v{k}_{i}");
                inner.push(format!("{value} AS {v}"));
                case.push_str(&format!(" WHEN {} THEN {v}", k + 1));
            }
            case.push_str(" END");
            outer.push(format!("{case} AS {}", quoted(name)));
        }
        Ok(format!(
            "SELECT {} FROM (SELECT {} FROM (SELECT *, TRUE AS {SOURCE_MARK} FROM {}) AS {s} {} JOIN (SELECT *, TRUE AS {TARGET_MARK} FROM {}) AS {t} ON ({})) AS __strata_merge",
            outer.join(", "),
            inner.join(", "),
            self.source,
            if by_source { "FULL" } else { "LEFT" },
            quoted(target),
            self.on,
        ))
    }
}

impl Engine {
    /// Runs a `MERGE` as one commit; `None` when no clause applied to any row (nothing
    /// is committed), else the version and the rows inserted, updated or deleted.
    pub(crate) async fn merge(
        &self,
        table: &Table,
        m: &MergeCommand,
    ) -> Result<Option<(strata_table::VersionInfo, u64)>> {
        let spec = table.spec();
        if !spec.has_row_key() {
            return Err(Error::Unsupported(format!(
                "MERGE into {:?}: a dataset without a row key has no row identity to match",
                table.name()
            )));
        }
        let keys: Vec<&str> = spec.primary_key().collect();
        let deletes: HashSet<i64> = m
            .clauses
            .iter()
            .enumerate()
            .filter(|(_, c)| c.action == Action::Delete)
            .map(|(i, _)| i as i64 + 1)
            .collect();
        let mut head = table.head_version().await?;
        let mut attempt = 0;
        loop {
            let schema = table.snapshot(&VersionSpec::Version(head)).await?.schema();
            let target = VersionedName {
                dataset: table.name().to_string(),
                version: VersionSpec::Version(head),
            }
            .to_table_name();
            let sql = m.query(&target, &schema, &keys)?;
            let (state, plan) = self.plan_sql(&sql, &m.tags).await?;
            let batches = DataFrame::new(state, plan).collect().await?;
            let (rows, gone) = split(&batches, &schema, spec, &deletes)?;
            let n = rows.iter().map(|b| b.num_rows() as u64).sum::<u64>() + gone.num_rows() as u64;
            if n == 0 {
                return Ok(None);
            }
            match table.merge_at(&rows, &gone, head).await {
                Ok(info) => return Ok(Some((info, n))),
                Err(e) if e.is_conflict() && attempt < ATTEMPTS => {
                    attempt += 1;
                    head = table.head_version().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The merge query's rows as rows to write (in the table's types) and keys to delete;
/// a key acted on twice is an error.
fn split(
    batches: &[RecordBatch],
    schema: &SchemaRef,
    spec: &DatasetSpec,
    deletes: &HashSet<i64>,
) -> Result<(Vec<RecordBatch>, RecordBatch)> {
    let exact = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let codec = KeyCodec::new(schema, &spec.partition_key, &spec.row_key)?;
    let key_idx = &codec.pk_indices;
    let key_schema = SchemaRef::new(schema.project(key_idx)?);
    let mut seen: HashSet<Box<[u8]>> = HashSet::new();
    let mut rows = Vec::new();
    let mut gone = Vec::new();
    for b in batches {
        let b = views::plain_batch(b)?;
        let action = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::Execution("MERGE: the clause column is not Int64".into()))?;
        for delete in [false, true] {
            let mask: BooleanArray = action
                .iter()
                .map(|a| a.map(|a| a != 0 && deletes.contains(&a) == delete))
                .collect();
            if mask.true_count() == 0 {
                continue;
            }
            let columns = schema
                .fields()
                .iter()
                .zip(b.columns().iter().skip(1))
                .map(|(f, c)| {
                    let c = arrow::compute::filter(c, &mask)?;
                    arrow::compute::cast_with_options(&c, f.data_type(), &exact).map_err(|e| {
                        Error::plan(format!("MERGE: the new values of {:?}: {e}", f.name()))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let key_cols: Vec<ArrayRef> = key_idx.iter().map(|&i| columns[i].clone()).collect();
            if let Some(k) = key_cols
                .iter()
                .zip(&codec.pk_names)
                .find_map(|(c, k)| (c.null_count() > 0).then_some(k))
            {
                return Err(Error::plan(format!(
                    "MERGE: a row to write has no value for the key column {k:?}"
                )));
            }
            let encoded = codec.encode_columns(&key_cols)?;
            for (r, row) in encoded.iter().enumerate() {
                if !seen.insert(row.as_ref().into()) {
                    let key: Vec<String> = key_cols
                        .iter()
                        .map(|c| {
                            arrow::util::display::array_value_to_string(c, r)
                                .unwrap_or_else(|_| "?".into())
                        })
                        .collect();
                    return Err(Error::plan(format!(
                        "MERGE acts twice on the row with key ({}): a target row matched by several source rows, or one key inserted twice",
                        key.join(", ")
                    )));
                }
            }
            if delete {
                gone.push(RecordBatch::try_new(key_schema.clone(), key_cols)?);
            } else {
                rows.push(
                    RecordBatch::try_new(schema.clone(), columns)
                        .map_err(|e| Error::plan(format!("MERGE: {e}")))?,
                );
            }
        }
    }
    let gone = arrow::compute::concat_batches(&key_schema, &gone)?;
    Ok((rows, gone))
}
