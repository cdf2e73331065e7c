//! Windows of continuous aggregations (ksqlDB's `WINDOW` clause).
//!
//! `SELECT ... FROM s WINDOW TUMBLING (SIZE 1 MINUTE [, GRACE PERIOD 10
//! SECONDS]) [WHERE ...] GROUP BY k` is rewritten into plain SQL before
//! planning: the source becomes a subquery that adds each row's event time
//! (`__event_time`) and window bounds (`windowstart`, `windowend`), one row
//! per window the record falls in (a hopping window's record is in several:
//! `unnest` of their starts), and the window bounds join the `GROUP BY`.
//! The same SQL without `EMIT CHANGES` is the batch query the maintained
//! result must equal.
//!
//! A session window (`WINDOW SESSION (30 SECONDS)`) cannot be assigned row
//! by row: a key's session is every record within the gap of another. The
//! continuous form gives each row the point window `[t, t]` and the
//! continuous aggregate merges them into sessions (see
//! [`crate::continuous`]); the batch form computes the same sessions with
//! window functions (a new session where a key's previous record is more
//! than the gap earlier), with the `WHERE` clause moved before them, since
//! only the records it keeps make sessions. `windowstart` and `windowend`
//! of a session are its first and last record's times, as in ksqlDB.
//!
//! Event time is the stream's `TIMESTAMP` column when it has one, else the
//! record timestamp.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, ListArray, TimestampMillisecondArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, TimeUnit};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::lex::{is_word, meaningful, text, tokens};
use crate::SqlError;

/// The column a windowed source adds for each row's event time (ms).
pub const EVENT_TIME: &str = "__event_time";
pub const WINDOW_START: &str = "windowstart";
pub const WINDOW_END: &str = "windowend";

/// ksqlDB's default grace period.
pub const DEFAULT_GRACE_MS: i64 = 24 * 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum WindowKind {
    Tumbling,
    Hopping {
        advance_ms: i64,
    },
    /// `size_ms` is the inactivity gap.
    Session,
}

/// A window clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub struct WindowSpec {
    pub kind: WindowKind,
    /// A tumbling or hopping window's size, a session window's gap: records
    /// at most this far apart are in one session.
    pub size_ms: i64,
    /// Records later than this after their window's end are dropped.
    pub grace_ms: i64,
}

/// A window query rewritten into plain SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windowed {
    /// The form a continuous aggregate maintains (`EMIT CHANGES|FINAL`).
    pub sql: String,
    /// The batch query over the records there are now. The same as `sql`
    /// but for session windows.
    pub batch_sql: String,
    pub window: WindowSpec,
}

/// Rewrites a query with a top-level `WINDOW` clause (None without one).
/// `event_time` gives the event-time expression of a source, by the name
/// written after FROM.
pub fn rewrite(
    sql: &str,
    event_time: impl Fn(&str) -> String,
) -> Result<Option<Windowed>, SqlError> {
    let all = tokens(sql)?;
    // Top-level positions of FROM, WINDOW and GROUP BY.
    let mut depth = 0;
    let (mut from, mut window, mut group) = (None, None, None);
    for (i, t) in all.iter().enumerate() {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ if depth == 0 && is_word(t, "FROM") && from.is_none() => from = Some(i),
            _ if depth == 0 && is_word(t, "WINDOW") => window = Some(i),
            _ if depth == 0 && is_word(t, "GROUP") => group = Some(i),
            _ => {}
        }
    }
    let Some(w) = window else {
        return Ok(None);
    };
    let from = from.filter(|&f| f < w).ok_or_else(|| {
        SqlError::syntax("WINDOW goes after FROM source: SELECT ... FROM s WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY k")
    })?;
    let group = group.filter(|&g| g > w).ok_or_else(|| {
        SqlError::syntax("a WINDOW needs a GROUP BY (after WHERE): ... WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY k")
    })?;
    // The window spec: WINDOW <kind> ( ... ).
    let spec_start = (w + 1..all.len())
        .find(|&i| meaningful(&all[i]))
        .ok_or_else(|| SqlError::syntax("WINDOW needs TUMBLING, HOPPING or SESSION"))?;
    let open = (spec_start + 1..all.len())
        .find(|&i| meaningful(&all[i]))
        .filter(|&i| all[i] == Token::LParen)
        .ok_or_else(|| SqlError::syntax("WINDOW TUMBLING (SIZE n UNIT): missing '('"))?;
    let close = (open..all.len())
        .find(|&i| all[i] == Token::RParen)
        .ok_or_else(|| SqlError::syntax("WINDOW ...: missing ')'"))?;
    let spec: Vec<&Token> = all[open + 1..close]
        .iter()
        .filter(|t| meaningful(t))
        .collect();
    let kind_word = &all[spec_start];
    if !["TUMBLING", "HOPPING", "SESSION"]
        .iter()
        .any(|k| is_word(kind_word, k))
    {
        // Standard SQL's named windows (`WINDOW w AS (...)`): not ours.
        return Ok(None);
    }
    let window = parse_spec(kind_word, &spec)?;

    // The source: `name [[AS] alias]` between FROM and WINDOW.
    let source: Vec<&Token> = all[from + 1..w].iter().filter(|t| meaningful(t)).collect();
    let (name, alias) = split_alias(&source)?;
    let ts = event_time(&name);
    // GROUP BY's list ends at HAVING, EMIT, LIMIT, ORDER or the end.
    let mut depth = 0;
    let mut group_end = all.len();
    for (i, t) in all.iter().enumerate().skip(group + 1) {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ if depth == 0
                && ["HAVING", "EMIT", "LIMIT", "ORDER"]
                    .iter()
                    .any(|k| is_word(t, k)) =>
            {
                group_end = i;
                break;
            }
            Token::SemiColon => {
                group_end = i;
                break;
            }
            _ => {}
        }
    }
    let assemble = |subquery: &str, between: &str| {
        let mut out = text(&all[..from + 1]);
        out.push(' ');
        out.push_str(subquery);
        out.push(' ');
        out.push_str(between.trim_end());
        out.push_str(&format!(", {WINDOW_START}, {WINDOW_END} "));
        out.push_str(&text(&all[group_end..]));
        out.trim().to_string()
    };
    let size = window.size_ms;
    let (sql, batch_sql) = match window.kind {
        WindowKind::Tumbling | WindowKind::Hopping { .. } => {
            let starts = match window.kind {
                WindowKind::Hopping { advance_ms } => {
                    format!("unnest(sediment_hop_starts({ts}, {size}, {advance_ms}))")
                }
                _ => format!("sediment_window_start({ts}, {size})"),
            };
            let subquery = format!(
                "(SELECT *, sediment_window_end({WINDOW_START}, {size}) AS {WINDOW_END} \
                 FROM (SELECT *, sediment_epoch_ms({ts}) AS {EVENT_TIME}, {starts} AS {WINDOW_START} FROM {name}) AS __windowed) AS {alias}"
            );
            let sql = assemble(&subquery, &text(&all[close + 1..group_end]));
            (sql.clone(), sql)
        }
        WindowKind::Session => {
            // The WHERE clause (between the window and GROUP BY) filters
            // the records before they make sessions.
            let filter = text(&all[close + 1..group]);
            let group_by = text(&all[group..group_end]);
            let by_at = (group + 1..group_end)
                .find(|&i| meaningful(&all[i]))
                .filter(|&i| is_word(&all[i], "BY"))
                .ok_or_else(|| SqlError::syntax("expected GROUP BY"))?;
            let keys = text(&all[by_at + 1..group_end]).trim().to_string();
            let timed = format!(
                "(SELECT *, sediment_epoch_ms({ts}) AS {EVENT_TIME} FROM {name} AS {alias} {}) AS {alias}",
                filter.trim()
            );
            let continuous = format!(
                "(SELECT *, sediment_timestamp_ms({EVENT_TIME}) AS {WINDOW_START}, \
                 sediment_timestamp_ms({EVENT_TIME}) AS {WINDOW_END} FROM {timed}) AS {alias}"
            );
            // A new session where the key's previous record is more than
            // the gap earlier; a session's number is the running count.
            let by = if keys.is_empty() {
                String::new()
            } else {
                format!("PARTITION BY {keys}")
            };
            let by_session = if keys.is_empty() {
                "PARTITION BY __session".to_string()
            } else {
                format!("PARTITION BY {keys}, __session")
            };
            let batch = format!(
                "(SELECT *, sediment_timestamp_ms(min({EVENT_TIME}) OVER ({by_session})) AS {WINDOW_START}, \
                 sediment_timestamp_ms(max({EVENT_TIME}) OVER ({by_session})) AS {WINDOW_END} \
                 FROM (SELECT *, sum(__new_session) OVER ({by} ORDER BY {EVENT_TIME} ROWS UNBOUNDED PRECEDING) AS __session \
                 FROM (SELECT *, CASE WHEN {EVENT_TIME} - lag({EVENT_TIME}) OVER ({by} ORDER BY {EVENT_TIME}) <= {size} THEN 0 ELSE 1 END AS __new_session \
                 FROM (SELECT * FROM {timed} WHERE {EVENT_TIME} IS NOT NULL) AS {alias}) AS {alias}) AS {alias}) AS {alias}"
            );
            (
                assemble(&continuous, &group_by),
                assemble(&batch, &group_by),
            )
        }
    };
    Ok(Some(Windowed {
        sql,
        batch_sql,
        window,
    }))
}

fn split_alias(source: &[&Token]) -> Result<(String, String), SqlError> {
    let bad = || {
        SqlError::unsupported("a WINDOW over anything but one stream or topic (joins, subqueries)")
    };
    // name parts: word (. word)*
    let mut i = 0;
    let mut parts = Vec::new();
    loop {
        match source.get(i) {
            Some(Token::Word(w)) => parts.push(w.to_string()),
            _ => return Err(bad()),
        }
        i += 1;
        if source.get(i) == Some(&&Token::Period) {
            i += 1;
            continue;
        }
        break;
    }
    let name = parts.join(".");
    let rest = &source[i..];
    let alias = match rest {
        [] => parts.last().cloned().unwrap_or_default(),
        [Token::Word(a)] => a.to_string(),
        [k, Token::Word(a)] if is_word(k, "AS") => a.to_string(),
        _ => return Err(bad()),
    };
    Ok((name, alias))
}

fn parse_spec(kind: &Token, spec: &[&Token]) -> Result<WindowSpec, SqlError> {
    // Comma-separated clauses: `SIZE n unit`, `ADVANCE BY n unit`,
    // `GRACE PERIOD n unit`, or for SESSION a bare `n unit`.
    let clauses: Vec<&[&Token]> = spec.split(|t| **t == Token::Comma).collect();
    let mut size = None;
    let mut advance = None;
    let mut grace = None;
    let mut gap = None;
    for c in clauses {
        match c {
            [k, rest @ ..] if is_word(k, "SIZE") => size = Some(duration(rest)?),
            [Token::Number(..), Token::Word(_)] if is_word(kind, "SESSION") => {
                gap = Some(duration(c)?)
            }
            [a, b, rest @ ..] if is_word(a, "ADVANCE") && is_word(b, "BY") => {
                advance = Some(duration(rest)?)
            }
            [a, b, rest @ ..] if is_word(a, "GRACE") && is_word(b, "PERIOD") => {
                grace = Some(duration(rest)?)
            }
            other => {
                return Err(SqlError::syntax(format!(
                    "unexpected '{}' in the WINDOW clause",
                    other
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                )))
            }
        }
    }
    let grace_ms = grace.unwrap_or(DEFAULT_GRACE_MS);
    let size_of = |size: Option<i64>| {
        size.filter(|&s| s > 0).ok_or_else(|| {
            SqlError::syntax("the WINDOW needs a SIZE of n UNIT, e.g. SIZE 1 MINUTE")
        })
    };
    if is_word(kind, "SESSION") {
        if size.is_some() || advance.is_some() {
            return Err(SqlError::syntax(
                "a SESSION window takes its gap alone: WINDOW SESSION (30 SECONDS)",
            ));
        }
        let gap_ms = gap.filter(|&g| g > 0).ok_or_else(|| {
            SqlError::syntax("a SESSION window needs a gap, e.g. WINDOW SESSION (30 SECONDS)")
        })?;
        Ok(WindowSpec {
            kind: WindowKind::Session,
            size_ms: gap_ms,
            grace_ms,
        })
    } else if is_word(kind, "TUMBLING") {
        if advance.is_some() {
            return Err(SqlError::syntax("ADVANCE BY is for HOPPING windows"));
        }
        Ok(WindowSpec {
            kind: WindowKind::Tumbling,
            size_ms: size_of(size)?,
            grace_ms,
        })
    } else if is_word(kind, "HOPPING") {
        let size_ms = size_of(size)?;
        let advance_ms =
            advance.ok_or_else(|| SqlError::syntax("a HOPPING window needs ADVANCE BY n UNIT"))?;
        if advance_ms > size_ms {
            return Err(SqlError::invalid_option(
                "a HOPPING window's ADVANCE BY cannot exceed its SIZE".to_string(),
            ));
        }
        Ok(WindowSpec {
            kind: WindowKind::Hopping { advance_ms },
            size_ms,
            grace_ms,
        })
    } else {
        Err(SqlError::syntax(format!(
            "unknown window '{kind}': TUMBLING, HOPPING or SESSION"
        )))
    }
}

/// `n UNIT` in milliseconds.
fn duration(tokens: &[&Token]) -> Result<i64, SqlError> {
    let bad = || {
        SqlError::syntax(format!(
            "expected a duration like '30 SECONDS', found '{}'",
            tokens
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ))
    };
    let [Token::Number(n, _), Token::Word(unit)] = tokens else {
        return Err(bad());
    };
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit = unit.value.to_ascii_uppercase();
    let ms = match unit.trim_end_matches('S') {
        "MILLISECOND" => 1,
        "SECOND" => 1_000,
        "MINUTE" => 60_000,
        "HOUR" => 3_600_000,
        "DAY" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms).filter(|&t| t >= 0).ok_or_else(bad)
}

/// Milliseconds since the epoch of a timestamp (any unit) or BIGINT array.
fn epoch_ms(a: &ArrayRef) -> Result<Int64Array> {
    let ms = match a.data_type() {
        DataType::Int64 => a.clone(),
        DataType::Timestamp(TimeUnit::Millisecond, _) => cast(a, &DataType::Int64)?,
        DataType::Timestamp(_, tz) => cast(
            &cast(a, &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()))?,
            &DataType::Int64,
        )?,
        other => return exec_err!("event time must be a TIMESTAMP or BIGINT (ms), not {other}"),
    };
    Ok(ms.as_primitive::<Int64Type>().clone())
}

fn utc_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn arg_arrays(args: &ScalarFunctionArgs) -> Result<Vec<ArrayRef>> {
    let n = args.number_rows;
    args.args.iter().map(|a| a.clone().into_array(n)).collect()
}

fn int_arg(args: &ScalarFunctionArgs, i: usize, name: &str) -> Result<i64> {
    match args.args.get(i) {
        Some(ColumnarValue::Scalar(ScalarValue::Int64(Some(v)))) if *v > 0 => Ok(*v),
        _ => exec_err!(
            "{name}: argument {} must be a positive BIGINT literal",
            i + 1
        ),
    }
}

macro_rules! window_udf {
    ($ty:ident, $name:literal, $args:literal, $ret:expr, $body:expr) => {
        #[derive(Debug, PartialEq, Eq, Hash)]
        pub struct $ty {
            signature: Signature,
        }

        impl $ty {
            pub fn udf() -> ScalarUDF {
                ScalarUDF::from($ty {
                    signature: Signature::any($args, Volatility::Immutable),
                })
            }
        }

        impl ScalarUDFImpl for $ty {
            fn name(&self) -> &str {
                $name
            }
            fn signature(&self) -> &Signature {
                &self.signature
            }
            fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
                Ok($ret)
            }
            fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
                let f: fn(ScalarFunctionArgs) -> Result<ArrayRef> = $body;
                Ok(ColumnarValue::Array(f(args)?))
            }
        }
    };
}

window_udf!(EpochMs, "sediment_epoch_ms", 1, DataType::Int64, |args| {
    let a = arg_arrays(&args)?;
    Ok(Arc::new(epoch_ms(&a[0])?))
});

window_udf!(WindowStart, "sediment_window_start", 2, utc_ms(), |args| {
    let size = int_arg(&args, 1, "sediment_window_start")?;
    let a = arg_arrays(&args)?;
    let ts = epoch_ms(&a[0])?;
    let out: TimestampMillisecondArray = ts
        .iter()
        .map(|t| t.map(|t| t - t.rem_euclid(size)))
        .collect();
    Ok(Arc::new(out.with_timezone("UTC")))
});

window_udf!(TimestampMs, "sediment_timestamp_ms", 1, utc_ms(), |args| {
    let a = arg_arrays(&args)?;
    Ok(Arc::new(
        epoch_ms(&a[0])?
            .reinterpret_cast::<datafusion::arrow::datatypes::TimestampMillisecondType>()
            .with_timezone("UTC"),
    ))
});

window_udf!(WindowEnd, "sediment_window_end", 2, utc_ms(), |args| {
    let size = int_arg(&args, 1, "sediment_window_end")?;
    let a = arg_arrays(&args)?;
    let ts = epoch_ms(&a[0])?;
    let out: TimestampMillisecondArray = ts.iter().map(|t| t.map(|t| t + size)).collect();
    Ok(Arc::new(out.with_timezone("UTC")))
});

window_udf!(
    HopStarts,
    "sediment_hop_starts",
    3,
    DataType::List(Arc::new(Field::new_list_field(utc_ms(), true))),
    |args| {
        let size = int_arg(&args, 1, "sediment_hop_starts")?;
        let advance = int_arg(&args, 2, "sediment_hop_starts")?;
        let a = arg_arrays(&args)?;
        let ts = epoch_ms(&a[0])?;
        let mut values = Vec::new();
        let mut offsets = vec![0i32];
        for t in ts.iter() {
            if let Some(t) = t {
                // Every start s = k * advance with s <= t < s + size.
                let last = t - t.rem_euclid(advance);
                let mut s = last;
                let mut starts = Vec::new();
                while s > t - size {
                    starts.push(s);
                    s -= advance;
                }
                values.extend(starts.into_iter().rev());
            }
            offsets.push(i32::try_from(values.len()).unwrap_or(i32::MAX));
        }
        let values = TimestampMillisecondArray::from(values).with_timezone("UTC");
        let field = Arc::new(Field::new_list_field(utc_ms(), true));
        Ok(Arc::new(ListArray::try_new(
            field,
            OffsetBuffer::new(offsets.into()),
            Arc::new(values),
            ts.nulls().cloned(),
        )?))
    }
);

/// The window functions the rewrite uses.
pub fn udfs() -> Vec<ScalarUDF> {
    vec![
        EpochMs::udf(),
        WindowStart::udf(),
        WindowEnd::udf(),
        HopStarts::udf(),
        TimestampMs::udf(),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn window_clauses_become_a_windowed_subquery() {
        let w = rewrite(
            "SELECT k, count(*) FROM trades WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 10 SECONDS) WHERE x > 1 GROUP BY k EMIT CHANGES",
            |name| format!("{name}._timestamp"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            w.window,
            WindowSpec {
                kind: WindowKind::Tumbling,
                size_ms: 60_000,
                grace_ms: 10_000
            }
        );
        assert!(
            w.sql
                .contains("sediment_window_start(trades._timestamp, 60000)"),
            "{}",
            w.sql
        );
        assert!(w.sql.contains("AS trades"), "{}", w.sql);
        assert!(
            w.sql
                .contains("WHERE x > 1 GROUP BY k, windowstart, windowend EMIT CHANGES"),
            "{}",
            w.sql
        );
        let w = rewrite(
            "select k from topics.t as t window hopping (size 10 seconds, advance by 5 seconds) group by k",
            |_| "\"timestamp\"".into(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(w.window.kind, WindowKind::Hopping { advance_ms: 5000 });
        assert_eq!(w.window.grace_ms, DEFAULT_GRACE_MS);
        assert!(
            w.sql.contains("FROM topics.t) AS __windowed) AS t"),
            "{}",
            w.sql
        );
        assert!(
            w.sql.ends_with("group by k, windowstart, windowend"),
            "{}",
            w.sql
        );
        assert_eq!(
            rewrite("SELECT 1 FROM s GROUP BY k", |_| String::new()).unwrap(),
            None
        );
        // A session window: the continuous form gives each row its own
        // time; the batch form numbers sessions with window functions, after
        // the WHERE clause.
        let w = rewrite(
            "SELECT k, count(*) FROM s WINDOW SESSION (30 SECONDS) WHERE x > 1 GROUP BY k",
            |_| "_timestamp".into(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            w.window,
            WindowSpec {
                kind: WindowKind::Session,
                size_ms: 30_000,
                grace_ms: DEFAULT_GRACE_MS
            }
        );
        assert!(
            w.sql
                .contains("FROM s AS s WHERE x > 1) AS s) AS s GROUP BY k, windowstart, windowend"),
            "{}",
            w.sql
        );
        assert!(
            w.batch_sql
                .contains("lag(__event_time) OVER (PARTITION BY k ORDER BY __event_time) <= 30000"),
            "{}",
            w.batch_sql
        );
        assert!(
            w.batch_sql.ends_with("GROUP BY k, windowstart, windowend"),
            "{}",
            w.batch_sql
        );
        for (sql, code) in [
            (
                "SELECT k FROM s WINDOW SESSION (SIZE 30 SECONDS) GROUP BY k",
                "42601",
            ),
            (
                "SELECT k FROM s WINDOW SESSION (0 SECONDS) GROUP BY k",
                "42601",
            ),
            (
                "SELECT k FROM s WINDOW TUMBLING (SIZE 1 FORTNIGHT) GROUP BY k",
                "42601",
            ),
            ("SELECT k FROM s WINDOW TUMBLING (SIZE 1 MINUTE)", "42601"),
            (
                "SELECT k FROM s WINDOW HOPPING (SIZE 1 MINUTE) GROUP BY k",
                "42601",
            ),
            (
                "SELECT k FROM s JOIN t ON a = b WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY k",
                "0A000",
            ),
        ] {
            assert_eq!(
                rewrite(sql, |_| String::new()).unwrap_err().code,
                code,
                "{sql}"
            );
        }
    }
}
