//! Each connection's cursors: `DECLARE`, `FETCH`, `CLOSE` (see
//! [`sediment_sql::cursor`] for what they mean over a push query).
//!
//! A cursor holds its query's running stream. Cursors are kept per
//! connection (by its peer address) and dropped with it: the accept loop
//! forgets a connection's cursors when the connection ends, which stops
//! their queries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use sediment_sql::SqlError;
use tokio_util::sync::CancellationToken;

/// One open cursor.
pub struct Cursor {
    pub schema: SchemaRef,
    stream: SendableRecordBatchStream,
    /// Rows of a batch a FETCH did not take.
    held: Option<RecordBatch>,
    /// Over a push query: it never ends, FETCH does not wait for more
    /// than its first rows.
    live: bool,
    done: bool,
}

type Open = HashMap<String, (SchemaRef, Arc<tokio::sync::Mutex<Cursor>>)>;

/// The cursors of every connection.
#[derive(Default)]
pub struct Cursors {
    open: Mutex<HashMap<SocketAddr, Open>>,
}

impl Cursors {
    pub fn declare(
        &self,
        conn: SocketAddr,
        name: String,
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
        live: bool,
    ) -> Result<(), SqlError> {
        let mut open = self.open.lock();
        let mine = open.entry(conn).or_default();
        if mine.contains_key(&name) {
            return Err(SqlError::new(
                "42P03",
                format!("cursor \"{name}\" already exists"),
            ));
        }
        let cursor = Cursor {
            schema: schema.clone(),
            stream,
            held: None,
            live,
            done: false,
        };
        mine.insert(name, (schema, Arc::new(tokio::sync::Mutex::new(cursor))));
        Ok(())
    }

    fn entry(
        &self,
        conn: SocketAddr,
        name: &str,
    ) -> Result<(SchemaRef, Arc<tokio::sync::Mutex<Cursor>>), SqlError> {
        self.open
            .lock()
            .get(&conn)
            .and_then(|m| m.get(name))
            .cloned()
            .ok_or_else(|| SqlError::new("34000", format!("cursor \"{name}\" does not exist")))
    }

    pub fn get(
        &self,
        conn: SocketAddr,
        name: &str,
    ) -> Result<Arc<tokio::sync::Mutex<Cursor>>, SqlError> {
        self.entry(conn, name).map(|(_, c)| c)
    }

    /// The schema of a cursor's rows (for a FETCH's description).
    pub fn schema(&self, conn: SocketAddr, name: &str) -> Result<SchemaRef, SqlError> {
        self.entry(conn, name).map(|(s, _)| s)
    }

    /// `CLOSE name`, or `CLOSE ALL` (`None`).
    pub fn close(&self, conn: SocketAddr, name: Option<&str>) -> Result<(), SqlError> {
        let mut open = self.open.lock();
        match name {
            None => {
                open.remove(&conn);
                Ok(())
            }
            Some(n) => match open.get_mut(&conn).and_then(|m| m.remove(n)) {
                Some(_) => Ok(()),
                None => Err(SqlError::new(
                    "34000",
                    format!("cursor \"{n}\" does not exist"),
                )),
            },
        }
    }

    /// Drops every cursor of a connection that ended.
    pub fn forget(&self, conn: SocketAddr) {
        self.open.lock().remove(&conn);
    }
}

impl Cursor {
    /// Up to `count` rows (all for None): see the module docs.
    pub async fn fetch(
        &mut self,
        count: Option<usize>,
        timeout: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<Vec<RecordBatch>, SqlError> {
        let want = count.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut rows = 0usize;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        if let Some(b) = self.held.take() {
            rows += self.take(b, want, &mut out);
        }
        while rows < want && !self.done {
            let next = if rows == 0 || !self.live {
                let next = self.stream.next();
                tokio::select! {
                    () = cancel.cancelled() => {
                        return Err(SqlError::new("57014", "canceling statement due to user request"));
                    }
                    () = async {
                        match deadline {
                            Some(d) if self.live => tokio::time::sleep_until(d).await,
                            _ => std::future::pending().await,
                        }
                    } => break,
                    b = next => b,
                }
            } else {
                // A push cursor returns what is ready, without waiting.
                match self.stream.next().now_or_never() {
                    Some(b) => b,
                    None => break,
                }
            };
            match next {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(sediment_sql::sqlstate(&e));
                }
                Some(Ok(b)) => rows += self.take(b, want - rows, &mut out),
            }
        }
        Ok(out)
    }

    /// Takes up to `left` rows of `b` into `out`, holding the rest.
    fn take(&mut self, b: RecordBatch, left: usize, out: &mut Vec<RecordBatch>) -> usize {
        let n = b.num_rows().min(left);
        if n < b.num_rows() {
            self.held = Some(b.slice(n, b.num_rows() - n));
        }
        if n > 0 {
            out.push(b.slice(0, n));
        }
        n
    }
}
