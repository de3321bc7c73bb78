//! Two processes committing to one dataset in one local directory: each version is won by
//! exactly one of them, losers retry, and no upsert is lost or duplicated.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use strata_storage::LocalStore;
use strata_table::{Catalog, Error, VersionSpec, WriteOutcome};
use strata_types::{DatasetName, DatasetSpec};

const ENV_DIR: &str = "STRATA_MULTIPROC_DIR";
const ENV_WRITER: &str = "STRATA_MULTIPROC_WRITER";
const COMMITS: i64 = 25;

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
        Field::new("v", DataType::Float64, true),
    ]))
}

fn rows(writer: i64, i: i64) -> RecordBatch {
    // One key of its own and one key both writers upsert.
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![
                format!("w{writer}"),
                "shared".to_string(),
            ])),
            Arc::new(Int64Array::from(vec![i, i])),
            Arc::new(Float64Array::from(vec![writer as f64, writer as f64])),
        ],
    )
    .unwrap()
}

/// The child side: runs only when the parent test sets the environment. It reports each
/// acknowledged version on stdout, which the parent reads.
#[tokio::test]
#[allow(clippy::print_stdout)]
async fn writer_process() {
    let (Ok(dir), Ok(writer)) = (std::env::var(ENV_DIR), std::env::var(ENV_WRITER)) else {
        return;
    };
    let writer: i64 = writer.parse().unwrap();
    let store = Arc::new(LocalStore::open(&dir).unwrap());
    let table = Catalog::new(store.clone(), store)
        .open_table("shared")
        .await
        .unwrap();
    for i in 0..COMMITS {
        match table.write(&[rows(writer, i)], BTreeMap::new()).await {
            Ok(WriteOutcome::Committed(info)) => println!("acked {}", info.version),
            other => panic!("writer {writer} commit {i}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn two_processes_share_a_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path()).unwrap());
    let catalog = Catalog::new(store.clone(), store);
    let spec = DatasetSpec::new(
        DatasetName::new("shared").unwrap(),
        schema(),
        vec!["k".into()],
        vec!["t".into()],
        2,
    )
    .unwrap();
    let table = catalog.create_table(spec).await.unwrap();

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|w| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "multiproc::writer_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ENV_DIR, dir.path())
                .env(ENV_WRITER, w.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut won: Vec<BTreeSet<u64>> = Vec::new();
    for mut child in children {
        let out = BufReader::new(child.stdout.take().unwrap());
        let versions: BTreeSet<u64> = out
            .lines()
            .map_while(Result::ok)
            // libtest may print "test … ... " on the same line before the first ack.
            .filter_map(|l| l.split("acked ").nth(1).map(|v| v.trim().parse().unwrap()))
            .collect();
        assert!(child.wait().unwrap().success());
        assert_eq!(versions.len(), COMMITS as usize);
        won.push(versions);
    }
    assert!(
        won[0].is_disjoint(&won[1]),
        "a version was acknowledged to both writers"
    );
    let all: Vec<u64> = won
        .iter()
        .flatten()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(all, (2..=1 + 2 * COMMITS as u64).collect::<Vec<_>>());

    let head = table.snapshot(&VersionSpec::Head).await.unwrap();
    assert_eq!(head.version(), 1 + 2 * COMMITS as u64);
    // Each writer's own keys, plus one row per shared key (the last writer's).
    assert_eq!(head.num_rows(), 3 * COMMITS as u64);
    let batch = head.read_all().await.unwrap();
    let k = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let t = batch
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let keys: BTreeSet<(String, i64)> = (0..batch.num_rows())
        .map(|i| (k.value(i).to_string(), t.value(i)))
        .collect();
    assert_eq!(keys.len(), batch.num_rows(), "no primary key appears twice");
    // A version that does not exist is a clear error.
    assert!(matches!(
        table.snapshot(&VersionSpec::Version(500)).await,
        Err(Error::VersionNotFound { .. })
    ));
}
