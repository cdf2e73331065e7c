//! # sediment-sql: one DataFusion engine over both tiers
//!
//! Not built yet (issue 4). This crate will register every topic and
//! declared stream as a DataFusion table whose scans stitch the Parquet
//! archive and the hot segments at one high-watermark snapshot, and will
//! run continuous (KSQL-like) queries (issue 5).
