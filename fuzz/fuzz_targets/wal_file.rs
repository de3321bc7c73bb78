//! A write-ahead log file as found on disk after a crash: torn, truncated or damaged
//! anywhere. Parsing must report damage, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = bytes::Bytes::copy_from_slice(data);
    for last in [false, true] {
        if let Ok((entries, valid)) = strata_ingest::wal::parse_file(bytes.clone(), 1, last) {
            assert!(valid <= data.len());
            for e in entries {
                // Entries are replayed through the IPC decoder without a size limit.
                let _ = strata_ingest::ipc::decode_stream(&e.payload, 64 << 20);
            }
        }
    }
});
