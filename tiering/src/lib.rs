//! # sediment-tiering: sealed segments settle into Parquet
//!
//! Not built yet (issue 3). This crate will convert sealed segments from
//! `sediment-log` into Parquet files in object storage, commit each
//! partition's manifest with conditional puts (upload first, then the
//! manifest, then allow local deletion), and rebuild Kafka record batches
//! from Parquet for consumers that fetch archived offsets.
