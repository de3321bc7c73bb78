//! Every key and path Strata writes, in one place. Nothing else in the crate formats a
//! key: a change of layout is a change here (and, for stored data, a format number).
//!
//! ```text
//! records (MetaStore)
//!   datasets/{name}                          dataset: its table id and spec
//!   dropped/{id}                             a dropped dataset waiting for its purge
//!   tables/{id}/tags/{tag}                   a tag: name → version
//!   tables/{id}/producers/{producer}         the server holding a producer's claim
//!   tables/{id}/producer-requests/{producer} another server asking for that producer
//!   tables/{id}/versions/{v:020}             version record in the live range  ┐ the version log
//!   tables/{id}/kept/{v:020}                 version record kept below it      │ over a MetaStore
//!   tables/{id}/head                         head hint (a recent version)      ┘ (crate::log)
//! blobs (BlobStore)
//!   tables/{id}/segments/{shard:05}/{uuid}.parquet   a segment (immutable)
//!   tables/{id}/checkpoints/{v:020}.json.zst         a manifest checkpoint
//! ```
//!
//! A version log on another backend (Cassandra's `versions` table) keeps the version
//! records itself; the rest stays as above.

/// Where a dataset's name points to its table id and spec.
pub fn dataset_key(name: &str) -> String {
    format!("{DATASETS}{name}")
}

/// The prefix listing every dataset's key.
pub const DATASETS: &str = "datasets/";

/// Where a dropped dataset waits for its files to be removed.
pub const DROPPED: &str = "dropped/";

pub fn dropped_key(id: &str) -> String {
    format!("{DROPPED}{id}")
}

/// Everything of table `id`, records and blobs, lies under this prefix.
pub fn table_prefix(id: &str) -> String {
    format!("tables/{id}/")
}

pub fn tag_key(id: &str, tag: &str) -> String {
    format!("tables/{id}/tags/{tag}")
}

pub fn tags_prefix(id: &str) -> String {
    format!("tables/{id}/tags/")
}

/// Which server may accept `producer`'s batches (stores shared by several servers).
/// Producer ids may hold `.` and `:`, which keys reserve or refuse: every character
/// but letters, digits, `_` and `-` is written `=XX` (its hex byte).
fn escape_producer(prefix: String, producer: &str) -> String {
    let mut key = prefix;
    for b in producer.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            key.push(b as char);
        } else {
            key.push_str(&format!("={b:02x}"));
        }
    }
    key
}

fn unescape_producer(escaped: &str) -> Option<String> {
    let escaped = escaped.as_bytes();
    let mut out = Vec::with_capacity(escaped.len());
    let mut i = 0;
    while i < escaped.len() {
        if escaped[i] == b'=' {
            let hex = std::str::from_utf8(escaped.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(escaped[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Which server may accept `producer`'s batches (stores shared by several servers).
pub fn producer_claim_key(id: &str, producer: &str) -> String {
    escape_producer(producer_claims_prefix(id), producer)
}

pub fn producer_claims_prefix(id: &str) -> String {
    format!("tables/{id}/producers/")
}

/// The producer id of a claim key.
pub fn producer_of_claim(id: &str, key: &str) -> Option<String> {
    unescape_producer(key.strip_prefix(&producer_claims_prefix(id))?)
}

/// Another server's request for `producer`.
pub fn producer_request_key(id: &str, producer: &str) -> String {
    escape_producer(producer_requests_prefix(id), producer)
}

pub fn producer_requests_prefix(id: &str) -> String {
    format!("tables/{id}/producer-requests/")
}

pub fn producer_of_request(id: &str, key: &str) -> Option<String> {
    unescape_producer(key.strip_prefix(&producer_requests_prefix(id))?)
}

/// A version record in the live range of a MetaStore-backed log.
pub fn version_key(id: &str, v: u64) -> String {
    format!("{}{v:020}", versions_prefix(id))
}

pub fn versions_prefix(id: &str) -> String {
    format!("tables/{id}/versions/")
}

/// Where vacuum keeps the records of protected (tagged) versions below the retention
/// line, so that `versions/` always holds one contiguous range ending at the head.
pub fn kept_key(id: &str, v: u64) -> String {
    format!("{}{v:020}", kept_prefix(id))
}

pub fn kept_prefix(id: &str) -> String {
    format!("tables/{id}/kept/")
}

/// A recent version, where a MetaStore-backed log starts probing for the head.
pub fn head_hint_key(id: &str) -> String {
    format!("tables/{id}/head")
}

/// The version number of a key under `prefix` (a version or kept key).
pub fn version_of(prefix: &str, key: &str) -> Option<u64> {
    key.strip_prefix(prefix)?.parse().ok()
}

/// The directory under which a table's segments lie (by shard).
pub fn segments_dir(id: &str) -> String {
    format!("tables/{id}/segments")
}

/// The prefix listing every segment of a table.
pub fn segments_prefix(id: &str) -> String {
    format!("{}/", segments_dir(id))
}

/// A new segment's path: `dir` is [`segments_dir`] (or any directory of a caller's).
pub fn segment_path(dir: &str, shard: u32, segment_id: &str) -> String {
    format!("{dir}/{shard:05}/{segment_id}.parquet")
}

pub fn checkpoint_path(id: &str, v: u64) -> String {
    format!("{}{v:020}.json.zst", checkpoints_prefix(id))
}

pub fn checkpoints_prefix(id: &str) -> String {
    format!("tables/{id}/checkpoints/")
}

/// The version of a checkpoint path, if it is one.
pub fn checkpoint_version(id: &str, path: &str) -> Option<u64> {
    path.strip_prefix(&checkpoints_prefix(id))?
        .strip_suffix(".json.zst")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_their_versions() {
        assert_eq!(
            version_of(&versions_prefix("t1"), &version_key("t1", 42)),
            Some(42)
        );
        assert_eq!(version_of(&kept_prefix("t1"), &version_key("t1", 42)), None);
        assert_eq!(
            checkpoint_version("t1", &checkpoint_path("t1", 300)),
            Some(300)
        );
        assert_eq!(checkpoint_version("t1", "tables/t1/checkpoints/x"), None);
        // Zero-padded: listing order is version order.
        assert!(version_key("t", 9) < version_key("t", 10));
        assert!(segment_path(&segments_dir("t"), 3, "u").starts_with(&table_prefix("t")));
        for producer in ["loader-1", "a.b:c", "..", ".tmp", "x=y"] {
            let key = producer_claim_key("t", producer);
            strata_storage::validate_path(&key).expect("a valid key");
            assert_eq!(producer_of_claim("t", &key).as_deref(), Some(producer));
            let key = producer_request_key("t", producer);
            assert_eq!(producer_of_request("t", &key).as_deref(), Some(producer));
            assert_eq!(producer_of_claim("t", &key), None);
        }
    }
}
