//! What the engine logs: committed statements and slow queries, with their figures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_query::{Engine, QueryConfig};

use crate::common::memory_catalog;

/// A log sink the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn committed_statements_and_slow_queries_are_logged() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Every query is "slow" here.
    let e = Engine::new(
        memory_catalog(),
        QueryConfig {
            slow_query: Some(Duration::ZERO),
            ..QueryConfig::default()
        },
    )
    .unwrap();
    for sql in [
        "CREATE TABLE r (k VARCHAR, t BIGINT, v DOUBLE, PRIMARY KEY ((k), t))",
        "INSERT INTO r VALUES ('a', 1, 1.5), ('b', 2, 2.5)",
        "DELETE FROM r WHERE k = 'a'",
        "SELECT k, v FROM r WHERE v > 0",
    ] {
        e.collect(sql).await.unwrap();
    }
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_string()
    };
    let create = line("operation=\"CREATE TABLE\"");
    assert!(
        create.contains("statement committed") && create.contains("dataset=\"r\""),
        "{create}"
    );
    let delete = line("operation=\"DELETE\"");
    assert!(delete.contains("rows=1"), "{delete}");
    let slow = line("sql=\"SELECT k, v FROM r WHERE v > 0\"");
    assert!(
        slow.contains("slow query") && slow.contains("rows=1"),
        "{slow}"
    );
    assert!(slow.contains("elapsed_ms="), "{slow}");
}
