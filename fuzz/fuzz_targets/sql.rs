//! The SQL front end: any text, parsed and planned (not run) by the engine over a
//! catalog with one table. Errors are fine; panics and stack overflows are not.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use strata_query::{Engine, QueryConfig};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let blobs = Arc::new(strata_storage::MemoryBlobStore::new());
        let meta = Arc::new(strata_storage::MemoryMetaStore::new());
        let catalog = strata_table::Catalog::new(blobs, meta);
        let engine = Engine::new(catalog, QueryConfig::default()).unwrap();
        runtime.block_on(async {
            engine
                .collect(
                    "CREATE TABLE weather (station TEXT NOT NULL, ts TIMESTAMP NOT NULL, \
                     temperature DOUBLE, PRIMARY KEY ((station), ts))",
                )
                .await
                .unwrap();
        });
        Fixture { runtime, engine }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    f.runtime.block_on(async {
        let _ = f.engine.prepare(sql).await;
    });
});
