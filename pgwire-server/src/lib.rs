//! # sediment-pgwire: the Postgres front door
//!
//! Serves the SQL engine over the Postgres wire protocol: simple and
//! extended query protocol, text and binary formats, `pg_catalog` and
//! `information_schema` for psql's `\d` and drivers' introspection, cancel
//! requests. The protocol work is `datafusion-postgres` (on `pgwire`);
//! this crate puts Sediment's statements in front of it
//! ([`sediment_sql::Engine::prepare`]), maps errors to SQLSTATEs, and owns
//! the accept loop so the server stops with the broker.

use std::collections::HashMap;
use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser as DfParser};
use futures::{FutureExt, Stream};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response, SendableRowStream, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, ErrorHandler, PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::data::DataRow;
use pgwire::messages::PgWireBackendMessage;
use sediment_sql::{CursorStatement, Engine, Prepared, SqlError};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

mod cursor;
mod push;

type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;

/// Serves connections from `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, engine: Arc<Engine>, shutdown: CancellationToken) {
    let handlers = Arc::new(Handlers::new(engine));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                let handlers = handlers.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        r = pgwire::tokio::process_socket(socket, None, handlers.clone()) => {
                            if let Err(e) = r {
                                tracing::debug!(%peer, error = %e, "postgres connection ended with an error");
                            }
                        }
                    }
                    // Its cursors' queries end with it.
                    handlers.service.cursors.forget(peer);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a postgres connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Everything pgwire needs for one server.
struct Handlers {
    service: Arc<Service>,
    startup: Arc<Startup>,
    cancel: Arc<Cancel>,
}

impl Handlers {
    fn new(engine: Arc<Engine>) -> Self {
        let ctx = Arc::new(engine.context().clone());
        let df = Arc::new(DfSessionService::new(ctx));
        let cursors = Arc::new(cursor::Cursors::default());
        let parser = Arc::new(Parser {
            engine: engine.clone(),
            inner: df.query_parser(),
            cursors: cursors.clone(),
        });
        let connections = Arc::new(ConnectionManager::new());
        let running = Arc::new(Running::default());
        Handlers {
            service: Arc::new(Service {
                engine,
                df,
                parser,
                running: running.clone(),
                cursors,
            }),
            startup: Arc::new(Startup {
                connections: connections.clone(),
            }),
            cancel: Arc::new(Cancel {
                planning: DefaultCancelHandler::new(connections),
                running,
            }),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(Errors)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

/// No password in the embedded default; registers each connection so a
/// cancel request (psql's Ctrl-C) can find it.
struct Startup {
    connections: Arc<ConnectionManager>,
}

#[async_trait]
impl NoopStartupHandler for Startup {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }
}

fn user_error(e: SqlError) -> PgWireError {
    let mut info = ErrorInfo::new("ERROR".to_string(), e.code.to_string(), e.message);
    info.hint = e.hint;
    PgWireError::UserError(Box::new(info))
}

/// Rewrites DataFusion's errors (which pgwire would send as XX000) into
/// ones with the right SQLSTATE and a hint.
struct Errors;

impl ErrorHandler for Errors {
    fn on_error<C>(&self, _client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        let mapped = match error {
            PgWireError::ApiError(e) => {
                if let Some(df) = e.downcast_ref::<datafusion::error::DataFusionError>() {
                    Some(sediment_sql::sqlstate(df))
                } else if let Some(p) =
                    e.downcast_ref::<datafusion::sql::sqlparser::parser::ParserError>()
                {
                    Some(SqlError::syntax(p.to_string()))
                } else {
                    e.downcast_ref::<SqlError>().cloned()
                }
            }
            _ => None,
        };
        if let Some(m) = mapped {
            tracing::debug!(code = m.code, message = %m.message, "query failed");
            *error = user_error(m);
        }
    }
}

struct Service {
    engine: Arc<Engine>,
    df: Arc<DfSessionService>,
    parser: Arc<Parser>,
    running: Arc<Running>,
    cursors: Arc<cursor::Cursors>,
}

/// Result streams in flight, by connection (pid), with the secret a cancel
/// request must present.
#[derive(Default)]
struct Running {
    streams: parking_lot::Mutex<HashMap<i32, Entry>>,
    next_id: std::sync::atomic::AtomicU64,
}

struct Entry {
    secret: bytes::Bytes,
    token: CancellationToken,
    id: u64,
}

impl Running {
    /// Registers a query of this connection; a cancel request for the
    /// connection cancels the returned token.
    fn register<C: ClientInfo>(self: &Arc<Self>, client: &C) -> Arc<Registered> {
        let (pid, secret) = client.pid_and_secret_key();
        let token = CancellationToken::new();
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.streams.lock().insert(
            pid,
            Entry {
                secret: secret.to_bytes(),
                token: token.clone(),
                id,
            },
        );
        Arc::new(Registered {
            running: self.clone(),
            pid,
            id,
            token,
        })
    }

    fn cancel(&self, pid: i32, secret: &bytes::Bytes) {
        if let Some(e) = self.streams.lock().get(&pid) {
            if e.secret == *secret {
                e.token.cancel();
            }
        }
    }
}

/// A query's entry in [`Running`], removed when its result streams are
/// dropped (unless a later query of the connection replaced it).
struct Registered {
    running: Arc<Running>,
    pid: i32,
    id: u64,
    token: CancellationToken,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut streams = self.running.streams.lock();
        if streams.get(&self.pid).is_some_and(|e| e.id == self.id) {
            streams.remove(&self.pid);
        }
    }
}

/// pgwire cancels a query only while it is planned; the rows are computed
/// as they are sent. This cancels both.
struct Cancel {
    planning: DefaultCancelHandler,
    running: Arc<Running>,
}

#[async_trait]
impl CancelHandler for Cancel {
    async fn on_cancel_request(&self, request: CancelRequest) {
        self.running
            .cancel(request.pid, &request.secret_key.to_bytes());
        self.planning.on_cancel_request(request).await;
    }
}

/// A result stream that ends with 57014 (query_canceled) when its token
/// fires; dropping the inner stream stops DataFusion's work.
struct Cancellable {
    rows: Option<SendableRowStream>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    _registered: Arc<Registered>,
}

impl Stream for Cancellable {
    type Item = PgWireResult<DataRow>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(rows) = self.rows.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(item) = rows.as_mut().poll_next(cx) {
            return Poll::Ready(item);
        }
        if self.cancelled.poll_unpin(cx).is_ready() {
            self.rows = None;
            return Poll::Ready(Some(Err(PgWireError::QueryCanceled)));
        }
        Poll::Pending
    }
}

/// Makes query responses cancellable through `registered`.
fn cancellable(responses: Vec<Response>, registered: &Arc<Registered>) -> Vec<Response> {
    responses
        .into_iter()
        .map(|r| match r {
            Response::Query(mut q) => {
                let rows = std::mem::replace(q.data_rows(), Box::pin(futures::stream::empty()));
                *q.data_rows() = Box::pin(Cancellable {
                    rows: Some(rows),
                    cancelled: Box::pin(registered.token.clone().cancelled_owned()),
                    _registered: registered.clone(),
                });
                Response::Query(q)
            }
            other => other,
        })
        .collect()
}

impl Service {
    /// Runs a push query or COPY for this connection, its rows sent as
    /// they come (`describe`: a RowDescription first, as the simple
    /// protocol wants); the command tag.
    async fn push<C>(
        &self,
        client: &mut C,
        q: &sediment_sql::PushQuery,
        format: &Format,
        describe: bool,
    ) -> PgWireResult<Tag>
    where
        C: ClientInfo + futures::Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let registered = self.running.register(client);
        let props = push::properties(client);
        let stream = self.engine.push(q, &props).await.map_err(user_error)?;
        let output = match q.copy {
            Some(c) => push::Output::Copy(c),
            None => push::Output::Rows { format, describe },
        };
        push::send(client, stream, output, &registered).await
    }
}

impl Service {
    /// Runs `DECLARE`, `FETCH` or `CLOSE` for this connection.
    async fn cursor<C>(
        &self,
        client: &mut C,
        c: CursorStatement,
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let conn = client.socket_addr();
        match c {
            CursorStatement::Declare { name, query } => {
                let q = match sediment_sql::push::parse(&query).map_err(user_error)? {
                    Some(q) if q.copy.is_none() => q,
                    Some(_) => {
                        return Err(user_error(SqlError::syntax(
                            "DECLARE ... CURSOR FOR takes a query, not COPY",
                        )))
                    }
                    None => sediment_sql::PushQuery {
                        sql: query,
                        changes: false,
                        emit_final: false,
                        copy: None,
                    },
                };
                let props = push::properties(client);
                let stream = self.engine.push(&q, &props).await.map_err(user_error)?;
                self.cursors
                    .declare(conn, name, stream.schema, stream.stream, q.changes)
                    .map_err(user_error)?;
                Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
            }
            CursorStatement::Fetch {
                name,
                count,
                timeout,
            } => {
                let cursor = self.cursors.get(conn, &name).map_err(user_error)?;
                let registered = self.running.register(client);
                let mut cursor = cursor.lock().await;
                let batches = cursor
                    .fetch(count, timeout, &registered.token)
                    .await
                    .map_err(user_error)?;
                let fields = Arc::new(
                    datafusion_postgres::arrow_pg::datatypes::arrow_schema_to_pg_fields(
                        &cursor.schema,
                        format,
                        None,
                    )?,
                );
                let rows: Vec<PgWireResult<DataRow>> = batches
                    .into_iter()
                    .flat_map(|b| {
                        datafusion_postgres::arrow_pg::datatypes::encode_recordbatch(
                            fields.clone(),
                            b,
                        )
                        .collect::<Vec<_>>()
                    })
                    .collect();
                let mut response =
                    pgwire::api::results::QueryResponse::new(fields, futures::stream::iter(rows));
                response.set_command_tag("FETCH");
                Ok(Response::Query(response))
            }
            CursorStatement::Close { name } => {
                self.cursors
                    .close(conn, name.as_deref())
                    .map_err(user_error)?;
                Ok(Response::Execution(Tag::new("CLOSE CURSOR")))
            }
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for Service {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo
            + ClientPortalStore
            + futures::Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = sediment_sql::split_statements(query).map_err(user_error)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::with_capacity(statements.len());
        let alone = statements.len() == 1;
        for s in statements {
            match self.engine.prepare(&s).await.map_err(user_error)? {
                Prepared::Custom(c) => {
                    let tag = self.engine.run(c).await.map_err(user_error)?;
                    out.push(Response::Execution(Tag::new(&tag)));
                }
                Prepared::Set(set) => {
                    let tag = push::set_property(client, &set.name, set.value.as_deref())?;
                    out.push(Response::Execution(tag));
                }
                Prepared::Cursor(c) => {
                    out.push(self.cursor(client, c, &Format::UnifiedText).await?);
                }
                Prepared::Push(q) => {
                    // Its rows go out before pgwire sends the responses
                    // gathered here: it must be the only statement.
                    if !alone {
                        return Err(user_error(
                            SqlError::unsupported("a push query or COPY among other statements")
                                .with_hint("send it as a query string of its own"),
                        ));
                    }
                    let tag = self.push(client, &q, &Format::UnifiedText, true).await?;
                    out.push(Response::Execution(tag));
                }
                Prepared::Sql(sql) => {
                    let registered = self.running.register(client);
                    out.extend(cancellable(
                        SimpleQueryHandler::do_query(&*self.df, client, &sql).await?,
                        &registered,
                    ));
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Service {
    type Statement = Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    /// A cursor DECLAREd in SQL is a portal of its name too, as in
    /// Postgres: drivers' server-side cursors (psycopg's named cursors)
    /// describe it so before they FETCH from it.
    async fn on_describe<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::extendedquery::Describe,
    ) -> PgWireResult<()>
    where
        C: ClientInfo
            + ClientPortalStore
            + futures::Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let cursor = match message.name.as_deref() {
            Some(name)
                if message.target_type
                    == pgwire::messages::extendedquery::TARGET_TYPE_BYTE_PORTAL
                    && client.portal_store().get_portal(name).is_none() =>
            {
                self.cursors.schema(client.socket_addr(), name).ok()
            }
            _ => None,
        };
        let Some(schema) = cursor else {
            return self._on_describe(client, message).await;
        };
        let fields = datafusion_postgres::arrow_pg::datatypes::arrow_schema_to_pg_fields(
            &schema,
            &Format::UnifiedText,
            None,
        )?;
        pgwire::api::query::send_describe_response(
            client,
            &pgwire::api::results::DescribePortalResponse::new(fields),
        )
        .await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo
            + ClientPortalStore
            + futures::Sink<PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let (sql, planned) = &portal.statement.statement;
        // Statements kept as text (ours, and what DataFusion plans no
        // query for), push queries (planned only for their result's
        // description) and FETCH (described by its cursor) are run here.
        let ours = planned.is_none()
            || sediment_sql::push::parse(sql).is_ok_and(|q| q.is_some())
            || sediment_sql::cursor::parse(sql).is_ok_and(|c| c.is_some());
        if ours {
            match self.engine.prepare(sql).await.map_err(user_error)? {
                Prepared::Custom(c) => {
                    let tag = self.engine.run(c).await.map_err(user_error)?;
                    return Ok(Response::Execution(Tag::new(&tag)));
                }
                Prepared::Set(set) => {
                    return Ok(Response::Execution(push::set_property(
                        client,
                        &set.name,
                        set.value.as_deref(),
                    )?))
                }
                Prepared::Cursor(c) => {
                    return self.cursor(client, c, &portal.result_column_format).await
                }
                Prepared::Push(q) => {
                    if !portal.parameters.is_empty() {
                        return Err(user_error(
                            SqlError::unsupported("a parameter in a push query or COPY")
                                .with_hint("write the values into the query"),
                        ));
                    }
                    let format = &portal.result_column_format;
                    return Ok(Response::Execution(
                        self.push(client, &q, format, false).await?,
                    ));
                }
                // DataFusion's own (BEGIN, SET, SHOW ...).
                Prepared::Sql(_) => {}
            }
        }
        let registered = self.running.register(client);
        let response = ExtendedQueryHandler::do_query(&*self.df, client, portal, max_rows).await?;
        Ok(cancellable(vec![response], &registered)
            .pop()
            .unwrap_or(Response::EmptyQuery))
    }
}

/// Parses for the extended protocol: Sediment's statements are kept as
/// text (run at Execute), rewrites are parsed and planned as SQL.
struct Parser {
    engine: Arc<Engine>,
    inner: Arc<DfParser>,
    cursors: Arc<cursor::Cursors>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let statements = sediment_sql::split_statements(sql).map_err(user_error)?;
        let Some(first) = statements.first() else {
            return self.inner.parse_sql(client, sql, types).await;
        };
        if statements.len() > 1 {
            return Err(user_error(SqlError::syntax(
                "cannot insert multiple commands into a prepared statement",
            )));
        }
        match self.engine.prepare(first).await.map_err(user_error)? {
            Prepared::Custom(_) | Prepared::Set(_) => Ok(Some((first.clone(), None))),
            // A FETCH is described by its cursor's rows.
            Prepared::Cursor(CursorStatement::Fetch { name, .. }) => {
                let schema = self
                    .cursors
                    .schema(client.socket_addr(), &name)
                    .map_err(user_error)?;
                let df_schema = datafusion::common::DFSchema::try_from(schema.as_ref().clone())
                    .map_err(|e| user_error(sediment_sql::sqlstate(&e)))?;
                let plan = datafusion::logical_expr::LogicalPlan::EmptyRelation(
                    datafusion::logical_expr::EmptyRelation {
                        produce_one_row: false,
                        schema: Arc::new(df_schema),
                    },
                );
                // What pgwire describes a query by: any SELECT, and the plan.
                let select = datafusion::sql::sqlparser::parser::Parser::parse_sql(
                    &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
                    "SELECT NULL",
                )
                .ok()
                .and_then(|mut v| v.pop())
                .ok_or_else(|| user_error(SqlError::internal("parsing SELECT NULL".into())))?;
                Ok(Some((first.clone(), Some((select, plan)))))
            }
            Prepared::Cursor(_) => Ok(Some((first.clone(), None))),
            Prepared::Sql(rewritten) => self.inner.parse_sql(client, &rewritten, types).await,
            // Planned as a plain query, for the description of its rows;
            // run as a push query (the text keeps EMIT CHANGES).
            Prepared::Push(q) if q.copy.is_none() => {
                let planned = self.inner.parse_sql(client, &q.sql, types).await?;
                Ok(planned.map(|(_, plan)| (first.clone(), plan)))
            }
            Prepared::Push(_) => Ok(Some((first.clone(), None))),
        }
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.inner.get_result_schema(stmt, column_format)
    }
}

/// Sets up `pg_catalog` (and its functions) over the engine's catalog.
pub fn install_pg_catalog(engine: &Engine) -> Result<(), String> {
    datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog(
        engine.context(),
        sediment_sql::CATALOG,
        Arc::new(datafusion_postgres::auth::AuthManager::default()),
    )
    .map_err(|e| e.to_string())
}
