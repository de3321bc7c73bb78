//! Strata's write and version statements: parsed here, run against the table layer.
//!
//! ```sql
//! CREATE TABLE [IF NOT EXISTS] weather (
//!     station VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, temperature DOUBLE,
//!     PRIMARY KEY ((station), ts)          -- (partition key), then the row key
//! ) [WITH (shards = 8)];
//! CREATE TABLE weather (station VARCHAR, ts TIMESTAMP, temperature DOUBLE)
//!     [WITH (shards = 8)] PRIMARY KEY ((station), ts);   -- the key after the columns
//! DROP TABLE [IF EXISTS] weather;
//! ALTER TABLE weather ADD [COLUMN] [IF NOT EXISTS] humidity DOUBLE;
//! DELETE FROM weather [WHERE …];
//! UPDATE weather SET temperature = temperature / 10 [WHERE …];
//! MERGE INTO weather USING fixes ON … WHEN [NOT] MATCHED … THEN …;   -- see crate::merge
//! RESTORE [TABLE] weather TO VERSION AS OF 12;      -- or 'tag', or TIMESTAMP AS OF '…'
//! ALTER TABLE weather CREATE TAG release_1 [AS OF VERSION 12];
//! ALTER TABLE weather DROP TAG [IF EXISTS] release_1;
//! OPTIMIZE [TABLE] weather;                          -- compaction
//! VACUUM [TABLE] weather [RETAIN n VERSIONS | RETAIN n HOURS];
//! ```
//!
//! `INSERT` is planned by DataFusion and lands in [`crate::sink::StrataSink`].
//! Every statement here answers one row: `operation`, `dataset`, the `version` it
//! committed (null when none) and the `rows` it affected (null when not meaningful).

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::{Expr, LogicalPlan, Operator};
use datafusion::sql::sqlparser::ast::{
    self, AlterTableOperation, ColumnOption, CreateTableOptions, ObjectType, SqlOption,
    TableConstraint,
};
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use strata_table::{CmpOp, Predicate, VacuumPolicy, VersionSpec};
use strata_types::{ColumnDef, DatasetSpec, DatasetSpecDef, Value};

use crate::dialect::StrataDialect;
use crate::error::{Error, Result};
use crate::merge::MergeCommand;

/// Shards of a dataset created without `WITH (shards = N)`.
pub const DEFAULT_SHARDS: u32 = 8;

/// A statement the engine runs itself.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    CreateTable {
        spec: DatasetSpec,
        if_not_exists: bool,
    },
    DropTable {
        name: String,
        if_exists: bool,
    },
    AddColumn {
        table: String,
        field: Field,
        if_not_exists: bool,
    },
    /// `DELETE FROM table [WHERE selection]`; the selection is SQL text, planned against
    /// the table when the command runs.
    Delete {
        table: String,
        selection: Option<String>,
    },
    /// `UPDATE t SET col = expr, … [WHERE …]`: (column, expression SQL) pairs.
    Update {
        table: String,
        assignments: Vec<(String, String)>,
        selection: Option<String>,
    },
    /// `MERGE INTO t USING … ON … WHEN …`.
    Merge(Box<MergeCommand>),
    Restore {
        table: String,
        to: VersionAt,
    },
    CreateTag {
        table: String,
        tag: String,
        version: Option<u64>,
    },
    DropTag {
        table: String,
        tag: String,
        if_exists: bool,
    },
    Optimize {
        table: String,
    },
    Vacuum {
        table: String,
        policy: VacuumPolicy,
    },
}

/// A version as written in SQL, before timestamps are evaluated.
#[derive(Clone, Debug, PartialEq)]
pub enum VersionAt {
    Spec(VersionSpec),
    /// `TIMESTAMP AS OF <expr>`: the SQL text of the expression.
    Timestamp(String),
}

impl Command {
    pub fn operation(&self) -> &'static str {
        match self {
            Command::CreateTable { .. } => "CREATE TABLE",
            Command::DropTable { .. } => "DROP TABLE",
            Command::AddColumn { .. } => "ALTER TABLE ADD COLUMN",
            Command::Delete { .. } => "DELETE",
            Command::Update { .. } => "UPDATE",
            Command::Merge(_) => "MERGE",
            Command::Restore { .. } => "RESTORE",
            Command::CreateTag { .. } => "CREATE TAG",
            Command::DropTag { .. } => "DROP TAG",
            Command::Optimize { .. } => "OPTIMIZE",
            Command::Vacuum { .. } => "VACUUM",
        }
    }

    pub fn dataset(&self) -> &str {
        match self {
            Command::CreateTable { spec, .. } => spec.name.as_str(),
            Command::DropTable { name, .. } => name,
            Command::Merge(m) => &m.table,
            Command::AddColumn { table, .. }
            | Command::Delete { table, .. }
            | Command::Update { table, .. }
            | Command::Restore { table, .. }
            | Command::CreateTag { table, .. }
            | Command::DropTag { table, .. }
            | Command::Optimize { table }
            | Command::Vacuum { table, .. } => table,
        }
    }

    /// The schema of every command's answer.
    pub fn result_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("operation", DataType::Utf8, false),
            Field::new("dataset", DataType::Utf8, false),
            Field::new("version", DataType::UInt64, true),
            Field::new("rows", DataType::UInt64, true),
        ]))
    }

    /// The one-row answer.
    pub fn result(&self, version: Option<u64>, rows: Option<u64>) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            Self::result_schema(),
            vec![
                Arc::new(StringArray::from(vec![self.operation()])),
                Arc::new(StringArray::from(vec![self.dataset()])),
                Arc::new(UInt64Array::from(vec![version])),
                Arc::new(UInt64Array::from(vec![rows])),
            ],
        )?)
    }
}

// ---------------------------------------------------------------------------------
// Statements sqlparser does not know: RESTORE, tags, OPTIMIZE, VACUUM.

/// A cursor over the significant tokens of a statement.
struct Tokens {
    tokens: Vec<Token>,
    pos: usize,
}

impl Tokens {
    fn new(sql: &str) -> Option<Self> {
        let tokens = Tokenizer::new(&StrataDialect, sql).tokenize().ok()?;
        let tokens = tokens
            .into_iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .collect();
        Some(Self { tokens, pos: 0 })
    }

    fn peek_word(&self, kw: &str) -> bool {
        matches!(self.tokens.get(self.pos), Some(Token::Word(w))
            if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
    }

    fn word(&mut self, kw: &str) -> bool {
        let ok = self.peek_word(kw);
        if ok {
            self.pos += 1;
        }
        ok
    }

    fn words(&mut self, kws: &[&str]) -> bool {
        let start = self.pos;
        for kw in kws {
            if !self.word(kw) {
                self.pos = start;
                return false;
            }
        }
        true
    }

    fn expect(&mut self, kws: &[&str], what: &str) -> Result<()> {
        if self.words(kws) {
            Ok(())
        } else {
            Err(self.error(&format!("expected {} {what}", kws.join(" "))))
        }
    }

    fn error(&self, message: &str) -> Error {
        let found = self
            .tokens
            .get(self.pos)
            .map_or("end of statement".to_string(), |t| format!("'{t}'"));
        Error::Sql(format!("{message}, found {found}"))
    }

    /// A name: an identifier (quoted or not) or a string; the last part of a dotted
    /// name (`strata.public.weather`).
    fn name(&mut self, what: &str) -> Result<String> {
        let mut name = self.one_name(what)?;
        while matches!(self.tokens.get(self.pos), Some(Token::Period)) {
            self.pos += 1;
            name = self.one_name(what)?;
        }
        Ok(name)
    }

    fn one_name(&mut self, what: &str) -> Result<String> {
        let name = match self.tokens.get(self.pos) {
            Some(Token::Word(w)) if w.quote_style.is_some() => w.value.clone(),
            Some(Token::Word(w)) => w.value.to_ascii_lowercase(),
            Some(Token::SingleQuotedString(s)) => s.clone(),
            _ => return Err(self.error(&format!("expected {what}"))),
        };
        self.pos += 1;
        Ok(name)
    }

    fn number(&mut self, what: &str) -> Result<u64> {
        match self.tokens.get(self.pos) {
            Some(Token::Number(n, _)) => {
                let n = n
                    .parse()
                    .map_err(|_| self.error(&format!("expected {what} (a whole number)")))?;
                self.pos += 1;
                Ok(n)
            }
            _ => Err(self.error(&format!("expected {what}"))),
        }
    }

    fn end(&mut self) -> Result<()> {
        while matches!(self.tokens.get(self.pos), Some(Token::SemiColon)) {
            self.pos += 1;
        }
        match self.tokens.get(self.pos) {
            None | Some(Token::EOF) => Ok(()),
            Some(_) => Err(self.error("expected end of statement")),
        }
    }

    /// The source text of the remaining tokens (up to a `;`).
    fn rest(&mut self) -> String {
        let mut out = String::new();
        while let Some(t) = self.tokens.get(self.pos) {
            if matches!(t, Token::SemiColon | Token::EOF) {
                break;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&t.to_string());
            self.pos += 1;
        }
        out
    }
}

/// Parses the statements sqlparser does not know. `None`: not one of them.
pub fn parse_custom(sql: &str) -> Result<Option<Command>> {
    let Some(mut t) = Tokens::new(sql) else {
        return Ok(None);
    };
    let cmd = if t.word("RESTORE") {
        t.word("TABLE");
        let table = t.name("a table name")?;
        t.expect(&["TO"], "after the table name")?;
        let to = if t.words(&["VERSION", "AS", "OF"]) {
            match t.tokens.get(t.pos) {
                Some(Token::Number(..)) => {
                    VersionAt::Spec(VersionSpec::Version(t.number("a version number")?))
                }
                _ => VersionAt::Spec(VersionSpec::Tag(t.name("a version number or tag")?)),
            }
        } else if t.words(&["TIMESTAMP", "AS", "OF"]) {
            let text = t.rest();
            if text.is_empty() {
                return Err(t.error("expected a timestamp"));
            }
            VersionAt::Timestamp(text)
        } else {
            return Err(t.error("expected VERSION AS OF or TIMESTAMP AS OF"));
        };
        Command::Restore { table, to }
    } else if t.words(&["ALTER", "TABLE"]) {
        let table = t.name("a table name")?;
        if t.words(&["CREATE", "TAG"]) {
            let tag = t.name("a tag name")?;
            let version = if t.words(&["AS", "OF", "VERSION"]) {
                Some(t.number("a version number")?)
            } else {
                None
            };
            Command::CreateTag {
                table,
                tag,
                version,
            }
        } else if t.words(&["DROP", "TAG"]) {
            let if_exists = t.words(&["IF", "EXISTS"]);
            let tag = t.name("a tag name")?;
            Command::DropTag {
                table,
                tag,
                if_exists,
            }
        } else {
            return Ok(None);
        }
    } else if t.word("OPTIMIZE") {
        t.word("TABLE");
        Command::Optimize {
            table: t.name("a table name")?,
        }
    } else if t.word("VACUUM") {
        t.word("TABLE");
        let table = t.name("a table name")?;
        let policy = if t.word("RETAIN") {
            let n = t.number("a count")?;
            if t.word("VERSIONS") {
                VacuumPolicy {
                    keep_last: Some(n.max(1)),
                    keep_within_ms: None,
                }
            } else if t.word("HOURS") {
                VacuumPolicy {
                    keep_last: None,
                    keep_within_ms: Some((n as i64).saturating_mul(3_600_000)),
                }
            } else {
                return Err(t.error("expected VERSIONS or HOURS"));
            }
        } else {
            default_vacuum_policy()
        };
        Command::Vacuum { table, policy }
    } else {
        return Ok(None);
    };
    t.end()?;
    Ok(Some(cmd))
}

/// What `VACUUM t` keeps without `RETAIN`: a week of history, like Delta Lake.
pub fn default_vacuum_policy() -> VacuumPolicy {
    VacuumPolicy {
        keep_last: None,
        keep_within_ms: Some(7 * 24 * 3_600_000),
    }
}

// ---------------------------------------------------------------------------------
// Statements sqlparser parses: CREATE TABLE, DROP TABLE, ALTER TABLE ADD COLUMN, DELETE.

pub(crate) fn object_name(name: &ast::ObjectName) -> Result<String> {
    let last = name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .ok_or_else(|| Error::plan(format!("invalid table name {name}")))?;
    Ok(ident(last))
}

/// A name as a SQL identifier that means exactly it (double-quoted).
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An identifier as DataFusion normalises it: unquoted names are lower-cased.
fn ident(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

/// Strata's type text for a SQL type.
pub fn sql_type(dt: &ast::DataType) -> Result<String> {
    let text = dt.to_string().to_ascii_uppercase();
    let (base, args) = match text.split_once('(') {
        Some((b, rest)) => (b.trim().to_string(), rest.split(')').next().unwrap_or("")),
        None => (text.clone(), ""),
    };
    let args: Vec<&str> = args
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    let tz = text.contains("WITH TIME ZONE") || base.starts_with("TIMESTAMPTZ");
    let base = base
        .trim_end_matches(" WITH TIME ZONE")
        .trim_end_matches(" WITHOUT TIME ZONE")
        .trim();
    let t = match base {
        "BOOLEAN" | "BOOL" => "boolean".to_string(),
        "TINYINT" | "INT1" => "int8".into(),
        "SMALLINT" | "INT2" => "int16".into(),
        "INT" | "INTEGER" | "INT4" | "MEDIUMINT" => "int32".into(),
        "BIGINT" | "INT8" | "INT64" => "int64".into(),
        "TINYINT UNSIGNED" | "UTINYINT" => "uint8".into(),
        "SMALLINT UNSIGNED" | "USMALLINT" => "uint16".into(),
        "INT UNSIGNED" | "INTEGER UNSIGNED" | "UINTEGER" => "uint32".into(),
        "BIGINT UNSIGNED" | "UBIGINT" => "uint64".into(),
        "REAL" | "FLOAT4" => "float32".into(),
        "FLOAT"
            if args
                .first()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| p <= 24) =>
        {
            "float32".into()
        }
        "FLOAT" | "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8" | "FLOAT64" => "float64".into(),
        "VARCHAR" | "CHAR" | "CHARACTER" | "CHARACTER VARYING" | "TEXT" | "STRING" | "NVARCHAR" => {
            "utf8".into()
        }
        "BYTEA" | "BLOB" | "BINARY" | "VARBINARY" | "BYTES" => "binary".into(),
        "DATE" => "date32".into(),
        "TIMESTAMP" | "TIMESTAMPTZ" | "DATETIME" => {
            let unit = match args.first().map(|p| p.parse::<u32>()) {
                None => "us",
                Some(Ok(0)) => "s",
                Some(Ok(3)) => "ms",
                Some(Ok(6)) => "us",
                Some(Ok(9)) => "ns",
                Some(_) => {
                    return Err(Error::plan(format!(
                        "{dt}: timestamp precision must be 0, 3, 6 or 9"
                    )));
                }
            };
            if tz {
                format!("timestamp({unit}, UTC)")
            } else {
                format!("timestamp({unit})")
            }
        }
        "DECIMAL" | "NUMERIC" | "DEC" => {
            let p = args.first().copied().unwrap_or("38");
            let s = args.get(1).copied().unwrap_or("0");
            format!("decimal128({p}, {s})")
        }
        _ => {
            return Err(Error::plan(format!(
                "unsupported column type {dt}; Strata stores BOOLEAN, TINYINT..BIGINT (and UNSIGNED), REAL, DOUBLE, VARCHAR, BYTEA, DATE, TIMESTAMP[(p)] [WITH TIME ZONE], DECIMAL(p, s)"
            )));
        }
    };
    Ok(t)
}

fn column_def(c: &ast::ColumnDef) -> Result<(ColumnDef, bool)> {
    let mut nullable = true;
    let mut primary = false;
    for o in &c.options {
        match &o.option {
            ColumnOption::NotNull => nullable = false,
            ColumnOption::Null => nullable = true,
            ColumnOption::PrimaryKey(_) => {
                primary = true;
                nullable = false;
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "column option {other} on {}",
                    c.name
                )));
            }
        }
    }
    Ok((
        ColumnDef {
            name: ident(&c.name),
            data_type: sql_type(&c.data_type)?,
            nullable,
        },
        primary,
    ))
}

/// `PRIMARY KEY ((a, b), c, d)`: partition key `a, b`, row key `c, d`. Without inner
/// parentheses the first column is the partition key (`PRIMARY KEY (a, c)`), as in CQL.
/// `parts` are the parenthesised list's elements.
fn primary_key<'a>(
    parts: impl IntoIterator<Item = &'a ast::Expr>,
) -> Result<(Vec<String>, Vec<String>)> {
    let names = |e: &ast::Expr| -> Result<Vec<String>> {
        match e {
            ast::Expr::Identifier(i) => Ok(vec![ident(i)]),
            ast::Expr::Nested(inner) => match inner.as_ref() {
                ast::Expr::Identifier(i) => Ok(vec![ident(i)]),
                other => Err(Error::plan(format!("invalid primary key column {other}"))),
            },
            ast::Expr::Tuple(items) => items
                .iter()
                .map(|i| match i {
                    ast::Expr::Identifier(i) => Ok(ident(i)),
                    other => Err(Error::plan(format!("invalid primary key column {other}"))),
                })
                .collect(),
            other => Err(Error::plan(format!("invalid primary key column {other}"))),
        }
    };
    let mut parts = parts.into_iter().map(names);
    let partition = parts
        .next()
        .ok_or_else(|| Error::plan("PRIMARY KEY needs at least one column"))??;
    let mut row = Vec::new();
    for p in parts {
        let p = p?;
        if p.len() != 1 {
            return Err(Error::plan(
                "only the first element of PRIMARY KEY may be a parenthesised partition key",
            ));
        }
        row.extend(p);
    }
    Ok((partition, row))
}

fn create_table(c: &ast::CreateTable, default_shards: u32) -> Result<Command> {
    if c.query.is_some() || c.like.is_some() || c.clone.is_some() {
        return Err(Error::Unsupported(
            "CREATE TABLE … AS / LIKE / CLONE: create the table with its columns and PRIMARY KEY, then INSERT INTO … SELECT".into(),
        ));
    }
    if c.or_replace || c.external || c.temporary {
        return Err(Error::Unsupported(
            "CREATE OR REPLACE / EXTERNAL / TEMPORARY TABLE".into(),
        ));
    }
    let name = object_name(&c.name)?;
    let mut columns = Vec::new();
    let mut inline_pk = Vec::new();
    for col in &c.columns {
        let (def, primary) = column_def(col)?;
        if primary {
            inline_pk.push(def.name.clone());
        }
        columns.push(def);
    }
    let mut key = None;
    for constraint in &c.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                key = Some(primary_key(pk.columns.iter().map(|c| &c.column.expr))?)
            }
            other => return Err(Error::Unsupported(format!("table constraint {other}"))),
        }
    }
    // The key clause after the column list: `CREATE TABLE t (…) PRIMARY KEY ((a), b)`.
    if let Some(expr) = &c.primary_key {
        if key.is_some() {
            return Err(Error::plan(
                "give PRIMARY KEY once: inside the column list or after it",
            ));
        }
        key = Some(match expr.as_ref() {
            ast::Expr::Tuple(items) => primary_key(items)?,
            ast::Expr::Nested(inner) => primary_key([inner.as_ref()])?,
            other => primary_key([other])?,
        });
    }
    let (partition_key, row_key) = match (key, inline_pk.as_slice()) {
        (Some(_), [_, ..]) => {
            return Err(Error::plan(
                "give the primary key either on a column or as PRIMARY KEY (…), not both",
            ));
        }
        (Some(k), []) => k,
        (None, [one]) => (vec![one.clone()], vec![]),
        (None, []) => {
            return Err(Error::plan(format!(
                "CREATE TABLE {name} needs a PRIMARY KEY: PRIMARY KEY ((partition key), row key…); the partition key decides the shard, the row key orders rows and makes writes upserts"
            )));
        }
        (None, [..]) => {
            return Err(Error::plan("only one column can be marked PRIMARY KEY"));
        }
    };
    // Key columns cannot hold nulls.
    for c in columns.iter_mut() {
        if partition_key.contains(&c.name) || row_key.contains(&c.name) {
            c.nullable = false;
        }
    }
    let mut shards = default_shards;
    let options: &[SqlOption] = match &c.table_options {
        CreateTableOptions::None => &[],
        CreateTableOptions::With(o) | CreateTableOptions::Options(o) => o,
        other => return Err(Error::Unsupported(format!("table options {other}"))),
    };
    for o in options {
        match o {
            SqlOption::KeyValue { key, value } if key.value.eq_ignore_ascii_case("shards") => {
                shards = value
                    .to_string()
                    .trim_matches('\'')
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        Error::plan(format!("shards must be a positive integer, got {value}"))
                    })?;
            }
            other => {
                return Err(Error::plan(format!(
                    "unknown table option {other}; the one option is shards = N"
                )));
            }
        }
    }
    let spec = DatasetSpec::from_def(&DatasetSpecDef {
        name,
        columns,
        partition_key,
        row_key,
        shards,
    })?;
    Ok(Command::CreateTable {
        spec,
        if_not_exists: c.if_not_exists,
    })
}

/// The command for a parsed statement, or `None` when DataFusion should plan it.
/// `CREATE TABLE` without `WITH (shards = N)` gets `default_shards`.
pub fn from_statement(s: &ast::Statement, default_shards: u32) -> Result<Option<Command>> {
    use ast::Statement as S;
    Ok(Some(match s {
        S::CreateTable(c) => create_table(c, default_shards)?,
        S::Drop {
            object_type: ObjectType::Table,
            if_exists,
            names,
            ..
        } => {
            let [name] = names.as_slice() else {
                return Err(Error::Unsupported("DROP TABLE of several tables".into()));
            };
            Command::DropTable {
                name: object_name(name)?,
                if_exists: *if_exists,
            }
        }
        S::AlterTable(alter) => {
            let table = object_name(&alter.name)?;
            let [op] = alter.operations.as_slice() else {
                return Err(Error::Unsupported(
                    "ALTER TABLE with several operations".into(),
                ));
            };
            match op {
                AlterTableOperation::AddColumn {
                    if_not_exists,
                    column_def,
                    ..
                } => {
                    let (def, primary) = column_def_for_add(column_def)?;
                    if primary {
                        return Err(Error::plan("an added column cannot be part of the key"));
                    }
                    Command::AddColumn {
                        table,
                        field: def,
                        if_not_exists: *if_not_exists,
                    }
                }
                other => {
                    return Err(Error::Unsupported(format!(
                        "ALTER TABLE {other}; Strata supports ADD COLUMN, CREATE TAG, DROP TAG"
                    )));
                }
            }
        }
        S::Delete(d) => {
            if d.using.is_some() || d.returning.is_some() || !d.order_by.is_empty() {
                return Err(Error::Unsupported(
                    "DELETE with USING, RETURNING or ORDER BY".into(),
                ));
            }
            let tables = match &d.from {
                ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
            };
            let [t] = tables.as_slice() else {
                return Err(Error::Unsupported("DELETE from several tables".into()));
            };
            let ast::TableFactor::Table { name, version, .. } = &t.relation else {
                return Err(Error::plan("DELETE needs a table name"));
            };
            if version.is_some() || !t.joins.is_empty() {
                return Err(Error::plan(
                    "DELETE applies to the head of one table (no joins, no VERSION AS OF)",
                ));
            }
            Command::Delete {
                table: object_name(name)?,
                selection: d.selection.as_ref().map(|e| e.to_string()),
            }
        }
        S::Update(u) => {
            if u.from.is_some()
                || u.returning.is_some()
                || !u.order_by.is_empty()
                || u.limit.is_some()
                || u.or.is_some()
                || u.output.is_some()
            {
                return Err(Error::Unsupported(
                    "UPDATE with FROM, RETURNING, ORDER BY, LIMIT or OR".into(),
                ));
            }
            let ast::TableFactor::Table { name, version, .. } = &u.table.relation else {
                return Err(Error::plan("UPDATE needs a table name"));
            };
            if version.is_some() || !u.table.joins.is_empty() {
                return Err(Error::plan(
                    "UPDATE applies to the head of one table (no joins, no VERSION AS OF)",
                ));
            }
            Command::Update {
                table: object_name(name)?,
                assignments: assignments(&u.assignments, "UPDATE")?,
                selection: u.selection.as_ref().map(|e| e.to_string()),
            }
        }
        S::Merge(m) => Command::Merge(Box::new(MergeCommand::parse(m)?)),
        S::CreateView(_) => {
            return Err(Error::Unsupported("CREATE VIEW".into()));
        }
        S::Drop { object_type, .. } => {
            return Err(Error::Unsupported(format!("DROP {object_type}")));
        }
        _ => return Ok(None),
    }))
}

/// `SET col = expr, …` as (column, expression SQL) pairs; `what` names the statement
/// in errors.
pub(crate) fn assignments(list: &[ast::Assignment], what: &str) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(list.len());
    for a in list {
        let ast::AssignmentTarget::ColumnName(column) = &a.target else {
            return Err(Error::Unsupported(format!("{what} … SET (a, b) = …")));
        };
        let column = match column.0.last() {
            Some(ast::ObjectNamePart::Identifier(i)) => ident(i),
            _ => return Err(Error::plan(format!("invalid column {column}"))),
        };
        if out.iter().any(|(c, _)| *c == column) {
            return Err(Error::plan(format!("{what} sets {column:?} twice")));
        }
        out.push((column, a.value.to_string()));
    }
    Ok(out)
}

fn column_def_for_add(c: &ast::ColumnDef) -> Result<(Field, bool)> {
    let (def, primary) = column_def(c)?;
    let dt = strata_types::spec::parse_type(&def.data_type)?;
    Ok((Field::new(def.name, dt, def.nullable), primary))
}

// ---------------------------------------------------------------------------------
// DELETE predicates.

/// A DataFusion filter over `schema` as a table-layer [`Predicate`], when it is made of
/// comparisons of columns with literals (`=`, `<>`, `<`, `<=`, `>`, `>=`, `IN`,
/// `BETWEEN`, `IS [NOT] NULL`, `AND`, `OR`, `NOT`). `None` otherwise.
pub fn to_predicate(expr: &Expr, schema: &Schema) -> Option<Predicate> {
    match expr {
        Expr::BinaryExpr(b) => match b.op {
            Operator::And | Operator::Or => {
                let l = to_predicate(&b.left, schema)?;
                let r = to_predicate(&b.right, schema)?;
                Some(if b.op == Operator::And {
                    Predicate::And(vec![l, r])
                } else {
                    Predicate::Or(vec![l, r])
                })
            }
            op => {
                let op = cmp_op(op)?;
                if let (Some(c), Some(v)) = (column(&b.left), literal(&b.right)) {
                    Some(Predicate::cmp(c, op, value_for(schema, c, &v)?))
                } else if let (Some(v), Some(c)) = (literal(&b.left), column(&b.right)) {
                    Some(Predicate::cmp(c, flip(op), value_for(schema, c, &v)?))
                } else {
                    None
                }
            }
        },
        Expr::Not(e) => Some(Predicate::Not(Box::new(to_predicate(e, schema)?))),
        Expr::IsNull(e) => Some(Predicate::IsNull(column(e)?.to_string())),
        Expr::IsNotNull(e) => Some(Predicate::IsNotNull(column(e)?.to_string())),
        Expr::InList(l) => {
            let c = column(&l.expr)?;
            let values = l
                .list
                .iter()
                .map(|e| value_for(schema, c, &literal(e)?))
                .collect::<Option<Vec<_>>>()?;
            let p = Predicate::In {
                column: c.to_string(),
                values,
            };
            Some(if l.negated {
                Predicate::Not(Box::new(p))
            } else {
                p
            })
        }
        Expr::Between(b) => {
            let c = column(&b.expr)?;
            let low = value_for(schema, c, &literal(&b.low)?)?;
            let high = value_for(schema, c, &literal(&b.high)?)?;
            let p = Predicate::And(vec![
                Predicate::cmp(c, CmpOp::GtEq, low),
                Predicate::cmp(c, CmpOp::LtEq, high),
            ]);
            Some(if b.negated {
                Predicate::Not(Box::new(p))
            } else {
                p
            })
        }
        Expr::Literal(v, _) => match v {
            // `WHERE true` / `WHERE false`: everything, nothing.
            datafusion::common::ScalarValue::Boolean(Some(true)) => Some(Predicate::And(vec![])),
            datafusion::common::ScalarValue::Boolean(_) => Some(Predicate::Or(vec![])),
            _ => None,
        },
        _ => None,
    }
}

fn cmp_op(op: Operator) -> Option<CmpOp> {
    Some(match op {
        Operator::Eq => CmpOp::Eq,
        Operator::NotEq => CmpOp::NotEq,
        Operator::Lt => CmpOp::Lt,
        Operator::LtEq => CmpOp::LtEq,
        Operator::Gt => CmpOp::Gt,
        Operator::GtEq => CmpOp::GtEq,
        _ => return None,
    })
}

fn flip(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::LtEq => CmpOp::GtEq,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::GtEq => CmpOp::LtEq,
        other => other,
    }
}

fn column(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(&c.name),
        _ => None,
    }
}

/// A literal, with casts of literals folded.
fn literal(e: &Expr) -> Option<datafusion::common::ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::Cast(c) => literal(&c.expr)?.cast_to(c.field.data_type()).ok(),
        Expr::TryCast(c) => literal(&c.expr)?.cast_to(c.field.data_type()).ok(),
        _ => None,
    }
}

/// The literal in the column's type, if it converts without loss.
fn value_for(schema: &Schema, column: &str, v: &datafusion::common::ScalarValue) -> Option<Value> {
    let dt = schema.field_with_name(column).ok()?.data_type();
    let cast = v.cast_to(dt).ok()?;
    if !v.is_null() && cast.cast_to(&v.data_type()).ok().as_ref() != Some(v) {
        return None;
    }
    let array = cast.to_array().ok()?;
    Value::from_array(array.as_ref(), 0).ok()
}

/// The filter of a planned `SELECT * FROM t WHERE …` (before optimisation).
pub fn plan_filter(plan: &LogicalPlan) -> Option<Expr> {
    match plan {
        LogicalPlan::Filter(f) => Some(f.predicate.clone()),
        other => other.inputs().into_iter().find_map(plan_filter),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};

    use super::*;

    fn parse(sql: &str) -> Option<Command> {
        if let Some(c) = parse_custom(sql).unwrap() {
            return Some(c);
        }
        let mut stmts = DFParserBuilder::new(sql)
            .with_dialect(&StrataDialect)
            .build()
            .unwrap()
            .parse_statements()
            .unwrap();
        match stmts.pop_front().unwrap() {
            DfStatement::Statement(s) => from_statement(&s, DEFAULT_SHARDS).unwrap(),
            _ => None,
        }
    }

    #[test]
    fn create_table_with_cql_style_key() {
        let Some(Command::CreateTable {
            spec,
            if_not_exists,
        }) = parse(
            "CREATE TABLE IF NOT EXISTS Weather (station VARCHAR, \"Ts\" TIMESTAMP(3) WITH TIME ZONE, \
             temp DOUBLE, hum REAL NULL, n BIGINT UNSIGNED, d DECIMAL(10, 2), PRIMARY KEY ((station), \"Ts\")) \
             WITH (shards = 4)",
        )
        else {
            panic!("not a create")
        };
        assert!(if_not_exists);
        assert_eq!(spec.name.as_str(), "weather");
        assert_eq!(spec.partition_key, vec!["station"]);
        assert_eq!(spec.row_key, vec!["Ts"]);
        assert_eq!(spec.shards, 4);
        let s = &spec.schema;
        assert!(!s.field(0).is_nullable() && !s.field(1).is_nullable());
        assert_eq!(
            s.field(1).data_type(),
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some("UTC".into()))
        );
        assert_eq!(s.field(3).data_type(), &DataType::Float32);
        assert_eq!(s.field(4).data_type(), &DataType::UInt64);
        assert_eq!(s.field(5).data_type(), &DataType::Decimal128(10, 2));
    }

    #[test]
    fn composite_partition_key_and_defaults() {
        let Some(Command::CreateTable { spec, .. }) =
            parse("CREATE TABLE t (a INT, b TEXT, c BIGINT, PRIMARY KEY ((a, b), c))")
        else {
            panic!()
        };
        assert_eq!(spec.partition_key, vec!["a", "b"]);
        assert_eq!(spec.row_key, vec!["c"]);
        assert_eq!(spec.shards, DEFAULT_SHARDS);
        let Some(Command::CreateTable { spec, .. }) =
            parse("CREATE TABLE t (a INT PRIMARY KEY, v TEXT)")
        else {
            panic!()
        };
        assert_eq!(spec.partition_key, vec!["a"]);
        assert!(spec.row_key.is_empty());
    }

    /// The key clause may follow the column list, as in ClickHouse.
    #[test]
    fn primary_key_after_the_column_list() {
        let key = |sql: &str| match parse(sql) {
            Some(Command::CreateTable { spec, .. }) => {
                (spec.partition_key, spec.row_key, spec.shards)
            }
            other => panic!("{sql}: {other:?}"),
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            key("CREATE TABLE t (a INT, b TEXT, c BIGINT) PRIMARY KEY ((a, b), c)"),
            (s(&["a", "b"]), s(&["c"]), DEFAULT_SHARDS)
        );
        assert_eq!(
            key("CREATE TABLE t (a INT, c BIGINT) WITH (shards = 2) PRIMARY KEY (a, c)"),
            (s(&["a"]), s(&["c"]), 2)
        );
        assert_eq!(
            key("CREATE TABLE t (a INT, v TEXT) PRIMARY KEY a"),
            (s(&["a"]), vec![], DEFAULT_SHARDS)
        );
        assert_eq!(
            key("CREATE TABLE t (a INT, v TEXT) PRIMARY KEY (a)"),
            (s(&["a"]), vec![], DEFAULT_SHARDS)
        );
    }

    #[test]
    fn bad_create_tables_say_why() {
        for (sql, needle) in [
            ("CREATE TABLE t (a INT)", "needs a PRIMARY KEY"),
            (
                "CREATE TABLE t (a INT, PRIMARY KEY (a)) WITH (shards = 0)",
                "positive",
            ),
            (
                "CREATE TABLE t (a INT, PRIMARY KEY (a)) WITH (color = 1)",
                "unknown table option",
            ),
            (
                "CREATE TABLE t (a JSON, PRIMARY KEY (a))",
                "unsupported column type",
            ),
            ("CREATE TABLE t (a DOUBLE, PRIMARY KEY (a))", "float"),
            ("CREATE TABLE t (a INT, PRIMARY KEY (b))", "b"),
        ] {
            let mut stmts = DFParserBuilder::new(sql)
                .with_dialect(&StrataDialect)
                .build()
                .unwrap()
                .parse_statements()
                .unwrap();
            let DfStatement::Statement(s) = stmts.pop_front().unwrap() else {
                panic!()
            };
            let e = from_statement(&s, DEFAULT_SHARDS).unwrap_err().to_string();
            assert!(e.contains(needle), "{sql}: {e}");
        }
    }

    #[test]
    fn version_statements() {
        assert_eq!(
            parse("RESTORE TABLE weather TO VERSION AS OF 12;"),
            Some(Command::Restore {
                table: "weather".into(),
                to: VersionAt::Spec(VersionSpec::Version(12))
            })
        );
        assert_eq!(
            parse("restore weather to version as of 'nightly'"),
            Some(Command::Restore {
                table: "weather".into(),
                to: VersionAt::Spec(VersionSpec::Tag("nightly".into()))
            })
        );
        assert_eq!(
            parse("RESTORE weather TO TIMESTAMP AS OF '2026-01-01 00:00:00'"),
            Some(Command::Restore {
                table: "weather".into(),
                to: VersionAt::Timestamp("'2026-01-01 00:00:00'".into())
            })
        );
        assert_eq!(
            parse("ALTER TABLE weather CREATE TAG \"Release-1\" AS OF VERSION 3"),
            Some(Command::CreateTag {
                table: "weather".into(),
                tag: "Release-1".into(),
                version: Some(3)
            })
        );
        assert_eq!(
            parse("ALTER TABLE weather DROP TAG IF EXISTS r1"),
            Some(Command::DropTag {
                table: "weather".into(),
                tag: "r1".into(),
                if_exists: true
            })
        );
        assert!(parse_custom("RESTORE weather TO 12").is_err());
        assert!(parse_custom("ALTER TABLE weather CREATE TAG r AS OF VERSION x").is_err());
        assert!(parse_custom("OPTIMIZE weather extra").is_err());
        assert!(matches!(
            parse("VACUUM weather RETAIN 5 VERSIONS"),
            Some(Command::Vacuum { policy, .. }) if policy.keep_last == Some(5)
        ));
    }
}
