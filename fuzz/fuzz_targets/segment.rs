//! Segment files, read by Strata's segment reader (`read_segment` over a blob store,
//! the path compaction, upserts and exports take): the footer, the embedded Arrow
//! schema, every column and row, with and without a deletion vector. A damaged file
//! must be an error, never a panic.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::file::metadata::PageIndexPolicy;
use strata_storage::{BlobStore, MemoryBlobStore};
use strata_table::SegmentMeta;
use strata_table::segment::{BlobReader, read_segment};

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts on every panic, even one `read_segment` contains
    // (it turns a decoder's assertion on a damaged page into a corrupt-segment error).
    // The default hook only prints: a panic that escapes still aborts the run.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let blobs: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
        let size = data.len() as u64;
        blobs
            .put("segment", bytes::Bytes::copy_from_slice(data))
            .await
            .expect("put");
        let reader = BlobReader::new(blobs.clone(), "segment", size);
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let Ok(builder) = ParquetRecordBatchStreamBuilder::new_with_options(reader, options).await
        else {
            return;
        };
        let schema = builder.schema().clone();
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let segment = SegmentMeta {
            id: "segment".into(),
            shard: 0,
            path: "segment".into(),
            rows,
            bytes: size,
            pk_min: vec![],
            pk_max: vec![],
            columns: vec![],
            created_ms: 0,
        };
        let columns: Vec<usize> = (0..schema.fields().len()).collect();
        let deleted: roaring::RoaringBitmap = [0u32, 2].into_iter().collect();
        for dv in [None, Some(&deleted)] {
            let _ = read_segment(blobs.clone(), &segment, &schema, &columns, dv).await;
        }
    });
});
