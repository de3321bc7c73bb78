//! Version records and manifest checkpoints as read from the store.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = strata_table::manifest::VersionRecord::decode("fuzz", data);
    let _ = strata_table::manifest::decode_checkpoint("fuzz", data);
});
