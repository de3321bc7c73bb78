//! Statement-shape limits: a statement the parser, planner or optimizer could recurse
//! on without end is refused with [`Error::TooComplex`] before it is planned.
//!
//! The SQL parser builds chains of binary operators (`1+1+…`, `a OR b OR …`, `x || y
//! || …`, casts `::`) and set operations (`… UNION ALL …`) in a loop, so the parser's
//! own recursion limit (on parentheses, subqueries, function calls) does not bound
//! them: a 4 KB statement becomes a tree 2,000 levels deep, and every later recursion
//! over it (planning, optimizing, printing, dropping) can overflow the stack.
//!
//! ```text
//!  sql ─▶ size ≤ max_statement_bytes ─▶ tokens: set operations ≤ max_depth
//!      ─▶ parse (nesting ≤ the parser's recursion limit)
//!      ─▶ expression depth ≤ max_depth (a visitor that stops at the limit)
//!          └─ too deep: the tree is taken apart a bounded depth at a time, so even
//!             dropping it cannot overflow the stack
//! ```
//!
//! Every check is iterative or bounded by the limit itself. Planning runs on the query
//! runtime, whose threads have large stacks (DataFusion's recursive planner and
//! optimizer rules grow theirs on the heap as needed).

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr, Query, Value, Visit, VisitMut, Visitor, VisitorMut};
use datafusion::sql::sqlparser::dialect::Dialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{Error, Result};

/// Default for [`crate::QueryConfig::max_statement_bytes`]: 1 MiB.
pub const DEFAULT_MAX_STATEMENT_BYTES: usize = 1 << 20;

/// Default for [`crate::QueryConfig::max_expression_depth`], DuckDB's
/// `max_expression_depth`.
pub const DEFAULT_MAX_DEPTH: usize = 1000;

/// The most parts a dotted name may have (`catalog.schema.table.column` and a few
/// levels of struct fields). The SQL parser backtracks over a dotted name that ends
/// in something it cannot read after an operator (`t > a.b.….~x`), trying both
/// readings at every dot: time doubles with each two parts (20 parts took 1.5 s, the
/// fuzzer's 40-part statement of 294 bytes 39 s), so long names are refused before
/// parsing.
pub const MAX_NAME_PARTS: usize = 12;

/// Refuses a statement longer than `max` bytes.
pub fn check_size(sql: &str, max: usize) -> Result<()> {
    if sql.len() > max {
        return Err(Error::TooComplex(format!(
            "the statement is {} bytes, more than the {max} allowed (query.max_statement_kb); \
             pass long value lists as a table or as bound parameters",
            sql.len()
        )));
    }
    Ok(())
}

/// Refuses a statement with more than `max` set operations (`UNION`, `INTERSECT`,
/// `EXCEPT`), which the parser chains without recursion. Tokens the tokenizer cannot
/// read are left to the parser, which reports them better.
pub fn check_tokens(sql: &str, dialect: &dyn Dialect, max: usize) -> Result<()> {
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else {
        return Ok(());
    };
    let set_operations = tokens
        .iter()
        .filter(|t| {
            matches!(t, Token::Word(w)
                if matches!(w.keyword, Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT))
        })
        .count();
    if set_operations > max {
        return Err(Error::TooComplex(format!(
            "the statement has {set_operations} set operations (UNION, INTERSECT, EXCEPT), \
             more than the {max} allowed (query.max_expression_depth)"
        )));
    }
    // The longest run of `name . name . …` (whitespace between is allowed).
    let (mut parts, mut longest, mut after_dot) = (0usize, 0usize, false);
    for t in &tokens {
        match t {
            Token::Whitespace(_) => continue,
            Token::Word(_) => {
                parts = if after_dot { parts + 1 } else { 1 };
                after_dot = false;
            }
            Token::Period if parts > 0 && !after_dot => after_dot = true,
            _ => {
                parts = 0;
                after_dot = false;
            }
        }
        longest = longest.max(parts);
    }
    if longest > MAX_NAME_PARTS {
        return Err(Error::TooComplex(format!(
            "the statement has a dotted name of {longest} parts, more than the \
             {MAX_NAME_PARTS} allowed"
        )));
    }
    Ok(())
}

/// Refuses a statement whose expressions (and subqueries) nest deeper than `max`.
/// A refused statement is taken apart here, so dropping it is safe.
pub fn check_depth(statement: &mut DfStatement, max: usize) -> Result<()> {
    let mut depth = Depth {
        depth: 0,
        deepest: 0,
        max,
    };
    let exceeded = match &*statement {
        DfStatement::Statement(s) => s.visit(&mut depth).is_break(),
        DfStatement::Explain(e) => match e.statement.as_ref() {
            DfStatement::Statement(s) => s.visit(&mut depth).is_break(),
            _ => false,
        },
        _ => false,
    };
    if !exceeded {
        return Ok(());
    }
    dismantle(statement);
    Err(Error::TooComplex(format!(
        "expressions nest more than {max} levels deep (query.max_expression_depth): \
         long chains of operators (a + b + …, x OR y OR …) are better written as IN lists, \
         sums of columns as arrays, or split into several statements"
    )))
}

/// Measures nesting; breaks as soon as it passes the limit, so its own recursion is
/// bounded by the limit.
struct Depth {
    depth: usize,
    deepest: usize,
    max: usize,
}

impl Depth {
    fn enter(&mut self) -> ControlFlow<()> {
        self.depth += 1;
        self.deepest = self.deepest.max(self.depth);
        if self.depth > self.max {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl Visitor for Depth {
    type Break = ();

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

/// Levels the dismantler descends before cutting a subtree off.
const CUT_DEPTH: usize = 32;

/// Takes a deep statement apart without deep recursion: subtrees below [`CUT_DEPTH`]
/// are cut off (replaced by `NULL`) and taken apart the same way, one at a time.
fn dismantle(statement: &mut DfStatement) {
    let mut cutter = Cutter {
        depth: 0,
        cut: Vec::new(),
    };
    match statement {
        DfStatement::Statement(s) => {
            let _ = VisitMut::visit(s.as_mut(), &mut cutter);
        }
        DfStatement::Explain(e) => {
            if let DfStatement::Statement(s) = e.statement.as_mut() {
                let _ = VisitMut::visit(s.as_mut(), &mut cutter);
            }
        }
        _ => {}
    }
    while let Some(mut expr) = cutter.cut.pop() {
        cutter.depth = 0;
        let _ = VisitMut::visit(&mut expr, &mut cutter);
        drop(expr); // at most CUT_DEPTH levels deep now
    }
}

struct Cutter {
    depth: usize,
    cut: Vec<Expr>,
}

impl VisitorMut for Cutter {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth >= CUT_DEPTH {
            let subtree = std::mem::replace(expr, Expr::value(Value::Null));
            self.cut.push(subtree);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _: &mut Expr) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParserBuilder;

    use super::*;
    use crate::dialect::StrataDialect;

    fn parse(sql: &str) -> DfStatement {
        DFParserBuilder::new(sql)
            .with_dialect(&StrataDialect)
            .build()
            .unwrap()
            .parse_statements()
            .unwrap()
            .pop_front()
            .unwrap()
    }

    fn chain(op: &str, n: usize) -> String {
        let terms: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        format!("SELECT {} FROM t", terms.join(op))
    }

    #[test]
    fn shallow_statements_pass() {
        let mut s = parse(&chain(" + ", 100));
        check_depth(&mut s, 1000).unwrap();
        let mut s = parse("SELECT a FROM t WHERE b IN (SELECT c FROM u WHERE d = 1)");
        check_depth(&mut s, 1000).unwrap();
    }

    #[test]
    fn long_operator_chains_are_refused_and_taken_apart() {
        for op in [" + ", " OR ", " AND ", " || ", " * "] {
            let mut s = parse(&chain(op, 100_000));
            let e = check_depth(&mut s, 1000).unwrap_err();
            assert!(matches!(e, Error::TooComplex(_)), "{op}: {e}");
            // Dropping the dismantled statement must not overflow this thread's stack.
            drop(s);
        }
    }

    #[test]
    fn the_limit_is_exact() {
        // `SELECT c0 + … + cN`: N binary operators nest N deep, plus the leaf.
        // The query is level 1, the root `+` level 2, the first column level 99.
        let mut s = parse(&chain(" + ", 98));
        check_depth(&mut s, 99).unwrap();
        let mut s = parse(&chain(" + ", 101));
        assert!(check_depth(&mut s, 99).is_err());
    }

    #[test]
    fn long_dotted_names_are_refused_before_parsing() {
        let name = |n: usize| {
            (0..n)
                .map(|i| format!("x{i}"))
                .collect::<Vec<_>>()
                .join(" . ")
        };
        check_tokens(&format!("SELECT {} FROM t", name(12)), &StrataDialect, 1000).unwrap();
        check_tokens("SELECT a.b, c.d.e, f FROM s.t", &StrataDialect, 1000).unwrap();
        let e =
            check_tokens(&format!("SELECT t > {}.~e", name(13)), &StrataDialect, 1000).unwrap_err();
        assert!(e.to_string().contains("dotted name of 13 parts"), "{e}");
        // What the SQL fuzzer found (fuzz/regressions/sql): each took seconds to
        // minutes in the parser.
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/sql");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let sql = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let e = check_tokens(&sql, &StrataDialect, 1000).unwrap_err();
            assert!(matches!(e, Error::TooComplex(_)), "{sql}: {e}");
            seen += 1;
        }
        assert!(seen > 0, "no regression inputs in {}", dir.display());
    }

    #[test]
    fn set_operations_and_size_are_counted() {
        // n selects, n - 1 set operations.
        let union: Vec<&str> = vec!["SELECT 1"; 1002];
        let sql = union.join(" UNION ALL ");
        let e = check_tokens(&sql, &StrataDialect, 1000).unwrap_err();
        assert!(e.to_string().contains("1001 set operations"), "{e}");
        check_tokens(&union[..1001].join(" UNION ALL "), &StrataDialect, 1000).unwrap();
        assert!(check_size("SELECT 1", 8).is_ok());
        assert!(matches!(
            check_size("SELECT 1", 7),
            Err(Error::TooComplex(_))
        ));
    }
}
