//! Integration tests of the table core over the memory backend.

mod common;
mod storage;
mod table;
