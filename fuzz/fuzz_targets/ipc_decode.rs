//! Arrow IPC as clients send it (Ingest, DoPut, Flight SQL parameters): the guard and
//! the decoder behind it must refuse anything malformed, never panic or allocate what
//! the message merely claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let payload = bytes::Bytes::copy_from_slice(data);
    // 16 MiB: the default ingest.max_batch_mb.
    if let Ok((_, batches)) = strata_ingest::ipc::decode_stream(&payload, 16 << 20) {
        for b in batches {
            let _ = b.num_rows();
        }
    }
});
