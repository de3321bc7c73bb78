//! Segment files: Parquet read the way scans read it (page index optional), every
//! column, every row.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::file::metadata::PageIndexPolicy;

fuzz_target!(|data: &[u8]| {
    let bytes = bytes::Bytes::copy_from_slice(data);
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let Ok(builder) = ParquetRecordBatchReaderBuilder::try_new_with_options(bytes, options) else {
        return;
    };
    let Ok(reader) = builder.with_batch_size(1024).build() else {
        return;
    };
    for batch in reader.take(64) {
        if batch.is_err() {
            break;
        }
    }
});
