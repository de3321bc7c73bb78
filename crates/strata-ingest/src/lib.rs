//! Strata's streaming ingestion.
//!
//! ```text
//!  IngestStream.submit(seq, Arrow IPC)
//!     ─▶ checks: sequence increases on the stream, size ≤ max_batch_bytes,
//!        IPC decodes, columns match the dataset (any order), no nulls in keys
//!     ─▶ duplicate? (seq ≤ producer's high-water mark) ─▶ ack {duplicate} after the next sync
//!     ─▶ wait for memory (memory_limit_bytes) ── full: the caller stops reading its stream
//!     ─▶ under the dataset lock: take an LSN, push to the memtable, queue in the WAL
//!     ─▶ WAL thread: write everything queued, one fdatasync, wake all ─▶ ack
//!
//!  flusher (rows / bytes / age / memory pressure / Flush RPC), one flush per dataset at a time
//!     ─▶ take the memtable ─▶ Table::write(rows, marks = {producer: max seq, "$wal": max LSN})
//!     ─▶ committed version ─▶ free memory ─▶ WAL files fully covered by marks are deleted
//!  compactor ─▶ Table::compact when a shard has compaction_trigger small segments
//!  open ─▶ replay the WAL: skip entries at or below their table's "$wal" mark (or of
//!          dropped tables), the rest go back into memtables with their producer marks
//! ```
//!
//! Invariants:
//! - A batch is acknowledged only after its WAL entry is synced; a duplicate only after
//!   the sync that follows its detection (so the original is durable too).
//! - A flush commits the producers' marks and the highest LSN it holds atomically with
//!   the rows. Because LSNs are taken and entries pushed under the dataset's lock, the
//!   memtable holds exactly the dataset's entries up to its highest LSN: replay can skip
//!   an entry by comparing its LSN with the committed mark, and nothing is applied twice.
//! - Flushes of one dataset are serialised; a failed flush is retried (with backoff)
//!   until it commits — its rows stay in memory meanwhile, and the memory bound turns
//!   that into backpressure, not loss.
//! - Unflushed rows never take more than `memory_limit_bytes` (the flush being written
//!   needs up to about twice its size again while it is sorted and encoded).

pub mod error;
pub mod ingester;
pub mod ipc;
pub mod metrics;
pub mod wal;

pub use error::{Error, Result};
pub use ingester::{
    Ack, DatasetStatus, IngestConfig, IngestStats, IngestStream, Ingester, MAX_SEQUENCE,
    PendingAck, RetentionConfig, WAL_MARK, batch_bytes, decode_ipc, validate_producer,
};
pub use ipc::{IpcGuard, IpcRefusal};
