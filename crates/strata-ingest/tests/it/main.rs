//! Integration tests of the ingester: acks, exactly-once, bad input, replay, backpressure.

mod ingest;
