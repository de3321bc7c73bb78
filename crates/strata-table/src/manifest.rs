//! Version records and manifests: the on-disk version log and the state it describes.
//!
//! A version record holds one commit's *change* (segments added and removed,
//! replaced deletion vectors, schema, producer marks). The manifest of version v is the
//! result of applying records 1..=v; a rollback record restarts from the manifest of its
//! target instead of v-1. Checkpoints (full manifests, every `checkpoint_interval`
//! versions, and wherever vacuum cut the log) bound how many records a read replays.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use base64::Engine;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use strata_types::ColumnDef;
use strata_types::spec::{schema_from_defs, schema_to_defs};

use crate::error::{Error, Result};
use crate::segment::SegmentMeta;

/// What a commit did, as recorded in its version and listed by `list_versions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Operation {
    Create,
    Append,
    Upsert,
    /// Upserts and deletes by key in one version (`MERGE`).
    Merge,
    Delete {
        predicate: String,
    },
    Rollback {
        to: u64,
    },
    Compact {
        shards: Vec<u32>,
    },
    AddColumn {
        column: String,
        data_type: String,
    },
    Vacuum {
        oldest_retained: u64,
    },
}

impl Operation {
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Append => "append",
            Operation::Upsert => "upsert",
            Operation::Merge => "merge",
            Operation::Delete { .. } => "delete",
            Operation::Rollback { .. } => "rollback",
            Operation::Compact { .. } => "compact",
            Operation::AddColumn { .. } => "add_column",
            Operation::Vacuum { .. } => "vacuum",
        }
    }
}

/// A serialized roaring bitmap (base64 in JSON).
#[derive(Clone, Debug, PartialEq)]
pub struct Dv(pub Arc<RoaringBitmap>);

impl Serialize for Dv {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut buf = Vec::with_capacity(self.0.serialized_size());
        self.0
            .serialize_into(&mut buf)
            .map_err(serde::ser::Error::custom)?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(buf))
    }
}

impl<'de> Deserialize<'de> for Dv {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)?;
        let bm = RoaringBitmap::deserialize_from(&bytes[..]).map_err(serde::de::Error::custom)?;
        Ok(Dv(Arc::new(bm)))
    }
}

/// Which versions a vacuum kept: everything at or above `oldest`, plus `protected`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    pub oldest: u64,
    #[serde(default)]
    pub protected: BTreeSet<u64>,
}

impl Retention {
    pub fn retains(&self, version: u64) -> bool {
        version >= self.oldest || self.protected.contains(&version)
    }
}

/// A segment named by shard and id (the manifest's key).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SegmentRef {
    pub shard: u32,
    pub id: String,
}

/// The deletion vector of one segment as of a version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DvUpdate {
    pub shard: u32,
    pub id: String,
    pub deleted: Dv,
}

/// The layout of the records (datasets, versions, checkpoints) this release writes.
/// It reads every format up to this one; records written before formats were numbered
/// are format 1. A change a reader could misread raises it.
pub const FORMAT: u32 = 1;

pub(crate) fn format_1() -> u32 {
    1
}

/// Refuses a record of a format newer than this release reads.
pub(crate) fn check_format(what: &str, format: u32) -> Result<()> {
    if format > FORMAT {
        return Err(Error::NewerFormat {
            what: what.to_string(),
            format,
            supported: FORMAT,
        });
    }
    Ok(())
}

/// One commit, stored under `tables/<id>/versions/<v:020>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// [`FORMAT`] when written.
    #[serde(default = "format_1")]
    pub format: u32,
    pub version: u64,
    pub timestamp_ms: i64,
    pub operation: Operation,
    /// For a rollback: the version whose manifest this one starts from (instead of v-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    /// The new schema, when this commit set or changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<ColumnDef>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<SegmentMeta>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<SegmentRef>,
    /// Replacement deletion vectors: every row of the segment deleted as of this version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<DvUpdate>,
    /// Producer sequence high-water marks raised by this commit (for a rollback: all of them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub producers: BTreeMap<String, u64>,
    pub rows_added: u64,
    pub rows_removed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

impl VersionRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("version records serialize")
    }

    pub fn decode(what: &str, bytes: &[u8]) -> Result<Self> {
        let record: Self = serde_json::from_slice(bytes).map_err(|e| Error::corrupt(what, e))?;
        check_format(what, record.format)?;
        Ok(record)
    }
}

/// A live segment and the rows of it deleted at this version.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveSegment {
    pub meta: Arc<SegmentMeta>,
    pub deleted: Option<Arc<RoaringBitmap>>,
}

impl LiveSegment {
    pub fn live_rows(&self) -> u64 {
        self.meta.rows - self.deleted.as_ref().map_or(0, |d| d.len())
    }
}

/// The full state of a dataset at one version.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub version: u64,
    pub timestamp_ms: i64,
    pub schema: SchemaRef,
    /// Live segments by shard, then id. Each shard's map is shared copy-on-write between
    /// versions, so deriving the next manifest costs O(shards + segments of the shards the
    /// commit touches), not O(all segments).
    shards: BTreeMap<u32, Arc<BTreeMap<String, LiveSegment>>>,
    pub producers: BTreeMap<String, u64>,
    pub retention: Retention,
}

impl Manifest {
    pub fn empty(schema: SchemaRef) -> Self {
        Self {
            version: 0,
            timestamp_ms: 0,
            schema,
            shards: BTreeMap::new(),
            producers: BTreeMap::new(),
            retention: Retention {
                oldest: 1,
                protected: BTreeSet::new(),
            },
        }
    }

    /// Live segments of one shard, without touching other shards' entries.
    pub fn shard_segments(&self, shard: u32) -> impl Iterator<Item = &LiveSegment> {
        self.shards.get(&shard).into_iter().flat_map(|m| m.values())
    }

    /// All live segments, by shard then id.
    pub fn live_segments(&self) -> impl Iterator<Item = &LiveSegment> {
        self.shards.values().flat_map(|m| m.values())
    }

    pub fn segment(&self, shard: u32, id: &str) -> Option<&LiveSegment> {
        self.shards.get(&shard)?.get(id)
    }

    pub fn segment_count(&self) -> usize {
        self.shards.values().map(|m| m.len()).sum()
    }

    pub fn live_rows(&self) -> u64 {
        self.live_segments().map(LiveSegment::live_rows).sum()
    }

    /// Shards whose segment maps are the very same object in both manifests; their
    /// content is equal without looking at it.
    pub fn shares_shard(&self, other: &Manifest, shard: u32) -> bool {
        match (self.shards.get(&shard), other.shards.get(&shard)) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// Shard numbers that have live segments in either manifest.
    pub fn shard_ids<'a>(&'a self, other: &'a Manifest) -> BTreeSet<u32> {
        self.shards
            .keys()
            .chain(other.shards.keys())
            .copied()
            .collect()
    }

    fn insert(&mut self, seg: LiveSegment) {
        let shard = Arc::make_mut(self.shards.entry(seg.meta.shard).or_default());
        shard.insert(seg.meta.id.clone(), seg);
    }

    fn remove(&mut self, shard: u32, id: &str) -> Option<LiveSegment> {
        let map = self.shards.get_mut(&shard)?;
        let removed = Arc::make_mut(map).remove(id);
        if map.is_empty() {
            self.shards.remove(&shard);
        }
        removed
    }

    fn get_mut(&mut self, shard: u32, id: &str) -> Option<&mut LiveSegment> {
        Arc::make_mut(self.shards.get_mut(&shard)?).get_mut(id)
    }

    /// Applies `record` on top of `self` (the manifest of `record.version - 1`, or of
    /// `record.base` for a rollback).
    pub fn apply(&mut self, record: &VersionRecord) -> Result<()> {
        let what = || format!("version {}", record.version);
        if let Some(defs) = &record.schema {
            self.schema = schema_from_defs(defs).map_err(|e| Error::corrupt(what(), e))?;
        }
        for r in &record.remove {
            self.remove(r.shard, &r.id).ok_or_else(|| {
                Error::corrupt(what(), format!("removes unknown segment {}", r.id))
            })?;
        }
        for meta in &record.add {
            self.insert(LiveSegment {
                meta: Arc::new(meta.clone()),
                deleted: None,
            });
        }
        for u in &record.deletes {
            let seg = self.get_mut(u.shard, &u.id).ok_or_else(|| {
                Error::corrupt(what(), format!("deletes from unknown segment {}", u.id))
            })?;
            seg.deleted = Some(u.deleted.0.clone());
        }
        for (producer, seq) in &record.producers {
            let mark = self.producers.entry(producer.clone()).or_insert(0);
            *mark = (*mark).max(*seq);
        }
        if let Some(r) = &record.retention {
            self.retention = r.clone();
        }
        self.version = record.version;
        self.timestamp_ms = record.timestamp_ms;
        Ok(())
    }
}

/// A full manifest as stored in a checkpoint blob (JSON, zstd-compressed).
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointData {
    #[serde(default = "format_1")]
    format: u32,
    version: u64,
    timestamp_ms: i64,
    schema: Vec<ColumnDef>,
    segments: Vec<(SegmentMeta, Option<Dv>)>,
    producers: BTreeMap<String, u64>,
    retention: Retention,
}

pub fn encode_checkpoint(m: &Manifest) -> Result<Vec<u8>> {
    let data = CheckpointData {
        format: FORMAT,
        version: m.version,
        timestamp_ms: m.timestamp_ms,
        schema: schema_to_defs(&m.schema),
        segments: m
            .live_segments()
            .map(|s| ((*s.meta).clone(), s.deleted.clone().map(Dv)))
            .collect(),
        producers: m.producers.clone(),
        retention: m.retention.clone(),
    };
    let json = serde_json::to_vec(&data).expect("checkpoints serialize");
    zstd::bulk::compress(&json, 3).map_err(|e| Error::corrupt("checkpoint", e))
}

pub fn decode_checkpoint(what: &str, bytes: &[u8]) -> Result<Manifest> {
    let json = zstd::stream::decode_all(bytes).map_err(|e| Error::corrupt(what, e))?;
    let data: CheckpointData =
        serde_json::from_slice(&json).map_err(|e| Error::corrupt(what, e))?;
    check_format(what, data.format)?;
    let mut m = Manifest {
        version: data.version,
        timestamp_ms: data.timestamp_ms,
        schema: schema_from_defs(&data.schema).map_err(|e| Error::corrupt(what, e))?,
        shards: BTreeMap::new(),
        producers: data.producers,
        retention: data.retention,
    };
    for (meta, dv) in data.segments {
        m.insert(LiveSegment {
            meta: Arc::new(meta),
            deleted: dv.map(|d| d.0),
        });
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records carry their format; one without (written before formats were numbered)
    /// reads as format 1, one from a newer release is refused with a clear error.
    #[test]
    fn record_formats() {
        let old = br#"{"version":3,"timestamp_ms":5,"operation":{"kind":"append"},"rows_added":1,"rows_removed":0}"#;
        let record = VersionRecord::decode("v3", old).unwrap();
        assert_eq!((record.format, record.version), (1, 3));
        let encoded = String::from_utf8(record.encode()).unwrap();
        assert!(
            encoded.starts_with(&format!("{{\"format\":{FORMAT},")),
            "{encoded}"
        );
        let newer = encoded.replacen(&format!("\"format\":{FORMAT}"), "\"format\":99", 1);
        let e = VersionRecord::decode("v3", newer.as_bytes()).unwrap_err();
        assert!(matches!(e, Error::NewerFormat { format: 99, .. }), "{e:?}");
        assert!(e.to_string().contains("upgrade"), "{e}");
    }
}
