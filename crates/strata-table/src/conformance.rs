//! The version-model test, runnable on any set of stores: a seeded random sequence of
//! upserts, key and predicate deletes, rollbacks, compactions, tags and vacuums, checked
//! after every step against a model (one map of rows per version). Every backend runs
//! it (memory and local stores in this crate's tests, Cassandra in its crate's); it
//! panics, naming the seed and step, on the first difference.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use strata_types::{DatasetName, DatasetSpec};

use crate::error::Error;
use crate::predicate::{CmpOp, Predicate};
use crate::table::{
    Catalog, ChangeCursor, ChangeType, Table, VacuumPolicy, VersionSpec, WriteOutcome,
};

/// A dataset's rows: (partition key `k`, row key `t`) → `v`.
type Rows = BTreeMap<(String, i64), Option<f64>>;

/// xorshift64*: deterministic, dependency-free randomness for a reproducible run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("t", DataType::Int64, false),
        Field::new("v", DataType::Float64, true),
    ]))
}

fn batch(rows: &[((String, i64), Option<f64>)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0.1))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.1))),
        ],
    )
    .expect("model batch")
}

async fn read(table: &Table, v: u64) -> Result<Rows, Error> {
    let all = table
        .snapshot(&VersionSpec::Version(v))
        .await?
        .read_all()
        .await?;
    let k = all.column(0).as_string::<i32>();
    let t = all.column(1).as_primitive::<Int64Type>();
    let val = all.column(2).as_primitive::<Float64Type>();
    let mut out = Rows::new();
    for i in 0..all.num_rows() {
        let key = (k.value(i).to_string(), t.value(i));
        let value = (!val.is_null(i)).then(|| val.value(i));
        assert!(
            out.insert(key.clone(), value).is_none(),
            "version {v} shows key {key:?} twice"
        );
    }
    Ok(out)
}

/// Applies one version's change rows to `copy`, checking each row against it: a delete or
/// update_before names a row the copy has, exactly; an insert or update_after a key it
/// does not have once the version's removals are applied.
fn apply_changes(
    copy: &mut Rows,
    v: u64,
    batches: &[RecordBatch],
    seen: &mut BTreeMap<String, usize>,
    ctx: &str,
) {
    let mut adds = Vec::new();
    for b in batches {
        let k = b.column(0).as_string::<i32>();
        let t = b.column(1).as_primitive::<Int64Type>();
        let val = b.column(2).as_primitive::<Float64Type>();
        let kind = b.column(3).as_string::<i32>();
        let version = b.column(4).as_primitive::<arrow::datatypes::UInt64Type>();
        for i in 0..b.num_rows() {
            assert_eq!(version.value(i), v, "{ctx}: _commit_version");
            let key = (k.value(i).to_string(), t.value(i));
            let value = (!val.is_null(i)).then(|| val.value(i));
            *seen.entry(kind.value(i).to_string()).or_default() += 1;
            match kind.value(i) {
                "delete" | "update_before" => assert_eq!(
                    copy.remove(&key),
                    Some(value),
                    "{ctx}: v{v} {} of {key:?}",
                    kind.value(i)
                ),
                "insert" | "update_after" => adds.push((key, value, kind.value(i).to_string())),
                other => panic!("{ctx}: unknown change type {other}"),
            }
        }
    }
    for (key, value, kind) in adds {
        assert!(
            copy.insert(key.clone(), value).is_none(),
            "{ctx}: v{v} {kind} of {key:?}, which the copy has"
        );
    }
}

/// Reads the next version's changes from `cursor` and applies them to `copy`.
async fn follow(
    cursor: &mut ChangeCursor,
    copy: &mut Rows,
    seen: &mut BTreeMap<String, usize>,
    ctx: &str,
) -> u64 {
    let changes = cursor
        .step(None)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: changes: {e}"))
        .unwrap_or_else(|| panic!("{ctx}: no changes for a committed version"));
    let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(changes.rows)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: change rows of v{}: {e}", changes.version));
    let quiet = matches!(
        changes.operation,
        crate::Operation::Compact { .. } | crate::Operation::Vacuum { .. }
    );
    if quiet {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 0, "{ctx}: {:?} yields no changes", changes.operation);
    }
    for b in &batches {
        let kinds = b.column(3).as_string::<i32>();
        for kind in kinds.iter().flatten() {
            assert!(
                [
                    ChangeType::Insert,
                    ChangeType::Delete,
                    ChangeType::UpdateBefore,
                    ChangeType::UpdateAfter
                ]
                .iter()
                .any(|k| k.as_str() == kind),
                "{ctx}: change type {kind}"
            );
        }
    }
    apply_changes(copy, changes.version, &batches, seen, ctx);
    changes.version
}

/// Runs `steps` random operations on a new dataset `name` in `catalog`, checking the
/// head after each and every version (readable or vacuumed, as the model says) at the
/// end. The change feed is followed from version 1 and applied to a copy, which must
/// equal every version as it commits; at the end a fresh handle replays the changes
/// from the oldest version vacuum left readable. Small key space (4 partitions × 12 rows), so upserts and deletes collide.
pub async fn version_model(catalog: &Catalog, name: &str, seed: u64, steps: usize) {
    let spec = DatasetSpec::new(
        DatasetName::new(name).expect("model dataset name"),
        schema(),
        vec!["k".into()],
        vec!["t".into()],
        3,
    )
    .expect("model spec");
    let table = catalog
        .create_table(spec)
        .await
        .expect("create model dataset");
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // versions[v] = the rows of version v (index 0 unused); tags name versions.
    let mut versions: Vec<Rows> = vec![Rows::new(), Rows::new()];
    let mut tags: BTreeMap<String, u64> = BTreeMap::new();
    // Vacuum's retention as the model sees it: versions >= oldest, and protected ones.
    let mut oldest = 1u64;
    let mut protected: BTreeSet<u64> = BTreeSet::new();
    let key = |rng: &mut Rng| (format!("p{}", rng.below(4)), rng.below(12) as i64);
    let mut cursor = ChangeCursor::open(&table, 1).await.expect("change cursor");
    let mut copy = Rows::new();
    // Change rows of each type the feed yielded.
    let mut seen = BTreeMap::new();
    follow(
        &mut cursor,
        &mut copy,
        &mut seen,
        &format!("seed {seed}, create"),
    )
    .await;
    for step in 0..steps {
        let head = (versions.len() - 1) as u64;
        let mut next = versions[head as usize].clone();
        let what = rng.below(100);
        let ctx = format!("seed {seed}, step {step}");
        let retained: Vec<u64> = protected.iter().copied().chain(oldest..=head).collect();
        let pick = |rng: &mut Rng| retained[rng.below(retained.len() as u64) as usize];
        let committed: Option<u64> = if what < 45 {
            let n = 1 + rng.below(8) as usize;
            let mut rows = Vec::with_capacity(n);
            for _ in 0..n {
                let v = (rng.below(5) > 0).then(|| rng.below(1000) as f64);
                rows.push((key(&mut rng), v));
            }
            for (k, v) in &rows {
                next.insert(k.clone(), *v);
            }
            match table.write(&[batch(&rows)], BTreeMap::new()).await {
                Ok(WriteOutcome::Committed(info)) => Some(info.version),
                other => panic!("{ctx}: upsert: {other:?}"),
            }
        } else if what < 55 {
            let keys: Vec<_> = (0..1 + rng.below(4))
                .map(|_| (key(&mut rng), None))
                .collect();
            for (k, _) in &keys {
                next.remove(k);
            }
            let keys = batch(&keys);
            let keys = keys.project(&[0, 1]).expect("key columns");
            Some(
                table
                    .delete_keys(&keys)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: delete keys: {e}"))
                    .version,
            )
        } else if what < 62 {
            let below = rng.below(12) as i64;
            next.retain(|(_, t), _| *t >= below);
            let p = Predicate::cmp("t", CmpOp::Lt, below);
            Some(
                table
                    .delete_where(&p)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: delete where: {e}"))
                    .version,
            )
        } else if what < 74 {
            let target = pick(&mut rng);
            next = versions[target as usize].clone();
            Some(
                table
                    .rollback(&VersionSpec::Version(target))
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: rollback to {target}: {e}"))
                    .version,
            )
        } else if what < 82 {
            table
                .compact()
                .await
                .unwrap_or_else(|e| panic!("{ctx}: compact: {e}"))
                .map(|i| i.version)
        } else if what < 90 {
            let at = pick(&mut rng);
            let tag = format!("tag{step}");
            table
                .create_tag(&tag, &VersionSpec::Version(at))
                .await
                .unwrap_or_else(|e| panic!("{ctx}: tag {at}: {e}"));
            tags.insert(tag, at);
            None
        } else if what < 94 && !tags.is_empty() {
            let i = rng.below(tags.len() as u64) as usize;
            let tag = tags.keys().nth(i).cloned().expect("a tag");
            table
                .delete_tag(&tag)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: delete tag: {e}"));
            tags.remove(&tag);
            None
        } else {
            let keep = 1 + rng.below(6);
            let report = table
                .vacuum(&VacuumPolicy {
                    keep_last: Some(keep),
                    keep_within_ms: None,
                })
                .await
                .unwrap_or_else(|e| panic!("{ctx}: vacuum: {e}"));
            if report.oldest_retained > oldest {
                // Versions tagged now (and still retained) stay readable below the line.
                protected = tags
                    .values()
                    .copied()
                    .filter(|v| {
                        *v < report.oldest_retained && (*v >= oldest || protected.contains(v))
                    })
                    .collect();
                oldest = report.oldest_retained;
            }
            report.version
        };
        if let Some(v) = committed {
            assert_eq!(v, head + 1, "{ctx}: versions are consecutive");
            versions.push(next);
            assert_eq!(follow(&mut cursor, &mut copy, &mut seen, &ctx).await, v);
            assert_eq!(
                copy, versions[v as usize],
                "{ctx}: the change feed's copy of v{v}"
            );
        }
        let head = (versions.len() - 1) as u64;
        assert_eq!(
            table.head_version().await.expect("head"),
            head,
            "{ctx}: head version"
        );
        let got = read(&table, head)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: read head: {e}"));
        assert_eq!(
            got, versions[head as usize],
            "{ctx}: rows of the head (v{head})"
        );
    }
    // Every version: retained ones (the live range and tagged ones) read as the model
    // says, the rest are reported vacuumed. A fresh handle reads through the log alone.
    let fresh = catalog.open_table(name).await.expect("reopen");
    for v in 1..versions.len() as u64 {
        match read(&fresh, v).await {
            Ok(rows) => {
                assert!(
                    v >= oldest || protected.contains(&v),
                    "seed {seed}: version {v} reads though vacuumed (oldest retained {oldest}, protected {protected:?})"
                );
                assert_eq!(
                    rows, versions[v as usize],
                    "seed {seed}: rows of version {v}"
                );
            }
            Err(Error::VersionVacuumed { .. }) => assert!(
                v < oldest && !protected.contains(&v),
                "seed {seed}: version {v} (oldest retained {oldest}, protected {protected:?}) was vacuumed"
            ),
            Err(e) => panic!("seed {seed}: read version {v}: {e}"),
        }
    }
    // The whole feed again on the fresh handle, from the first version whose changes
    // vacuum left readable (1 when nothing was vacuumed).
    let head = (versions.len() - 1) as u64;
    let from = match ChangeCursor::open(&fresh, 1).await {
        Ok(_) if oldest == 1 => 1,
        Ok(_) => panic!("seed {seed}: changes from version 1 open though vacuumed to {oldest}"),
        Err(Error::ChangesVacuumed { readable, .. }) => {
            assert!(oldest > 1, "seed {seed}: changes vacuumed, yet nothing was");
            assert_eq!(readable, oldest + 1, "seed {seed}: oldest readable change");
            readable
        }
        Err(e) => panic!("seed {seed}: open changes from 1: {e}"),
    };
    if from <= head {
        let mut cursor = ChangeCursor::open(&fresh, from)
            .await
            .expect("replay cursor");
        let mut copy = versions[from as usize - 1].clone();
        for v in from..=head {
            let ctx = format!("seed {seed}, replay");
            assert_eq!(follow(&mut cursor, &mut copy, &mut seen, &ctx).await, v);
            assert_eq!(copy, versions[v as usize], "{ctx}: copy of v{v}");
        }
        assert!(cursor.step(None).await.expect("past the head").is_none());
    }
    if steps >= 100 {
        for kind in ["insert", "delete", "update_before", "update_after"] {
            assert!(
                seen.get(kind).copied().unwrap_or(0) > 0,
                "seed {seed}: the feed never yielded {kind}: {seen:?}"
            );
        }
    }
    let listed: Vec<u64> = fresh
        .list_versions()
        .await
        .expect("list")
        .iter()
        .map(|i| i.version)
        .collect();
    assert_eq!(
        listed.last().copied(),
        Some((versions.len() - 1) as u64),
        "seed {seed}: listing ends at the head"
    );
    for (tag, v) in &tags {
        let got = fresh
            .resolve(&VersionSpec::Tag(tag.clone()))
            .await
            .expect("resolve tag");
        assert_eq!(got, *v, "seed {seed}: tag {tag}");
    }
}
