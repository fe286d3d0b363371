//! orch-log: a JSONL checkpoint sink that accepts host slices only.
