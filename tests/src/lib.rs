//! System tests live in `tests/it`.
