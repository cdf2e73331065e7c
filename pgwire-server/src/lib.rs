//! # sediment-pgwire: the Postgres wire protocol
//!
//! Not built yet (issue 4). This crate will serve `sediment-sql` to psql,
//! psycopg, JDBC and BI tools, with SQLSTATE mapping in one place and
//! push-query streaming.
