//! Cursors: `DECLARE c CURSOR FOR <query>`, `FETCH`, `CLOSE`, the way
//! drivers page through results, push queries included.
//!
//! A cursor over a push query (`... EMIT CHANGES`) never ends: `FETCH n`
//! waits until at least one row is there (or its `WITH (timeout = ...)`
//! passes), then returns up to `n` rows that are ready, without waiting
//! for more (Materialize's `SUBSCRIBE` cursors behave the same). A cursor
//! over an ordinary query returns `n` rows, or what is left. Cursors move
//! forward only; they belong to their connection, and live until `CLOSE`
//! or the end of the connection (transactions do not bound them).
//! Running them is the Postgres server's job (`sediment-pgwire`); this
//! parses them.

use std::time::Duration;

use datafusion::sql::sqlparser::tokenizer::Token;

use crate::lex::{is_word, meaningful, text, tokens};
use crate::SqlError;

/// A cursor statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorStatement {
    Declare {
        name: String,
        /// The query, as written (with its `EMIT CHANGES`, if any).
        query: String,
    },
    Fetch {
        name: String,
        /// Rows wanted; None for `ALL`.
        count: Option<usize>,
        /// How long a push cursor's FETCH waits for a first row; None:
        /// until one comes.
        timeout: Option<Duration>,
    },
    /// `CLOSE name`; `CLOSE ALL` has None.
    Close { name: Option<String> },
}

fn forward_only(what: &str) -> SqlError {
    SqlError::new(
        "0A000",
        format!("FETCH {what}: cursors here move forward only"),
    )
    .with_hint("use FETCH n, FETCH NEXT, FETCH FORWARD n or FETCH ALL")
}

/// A cursor's name: an identifier, lower-cased unless quoted.
fn name_of(t: Option<&Token>) -> Result<String, SqlError> {
    match t {
        Some(Token::Word(w)) if w.quote_style.is_some() => Ok(w.value.clone()),
        Some(Token::Word(w)) => Ok(w.value.to_ascii_lowercase()),
        other => Err(SqlError::syntax(format!(
            "expected a cursor name, found {}",
            other.map_or("the end".to_string(), Token::to_string)
        ))),
    }
}

fn count_of(t: &Token) -> Result<usize, SqlError> {
    match t {
        Token::Number(n, _) => n
            .parse::<usize>()
            .map_err(|_| SqlError::syntax(format!("FETCH count '{n}' is not a whole number"))),
        other => Err(SqlError::syntax(format!(
            "expected a row count, found {other}"
        ))),
    }
}

/// `'1s'`, `'250ms'`, `'2 minutes'`, `'0'` (seconds).
fn duration_of(s: &str) -> Result<Duration, SqlError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (s[..split].trim(), s[split..].trim().to_ascii_lowercase());
    let bad = || {
        SqlError::invalid_option(format!(
            "timeout '{s}' is not a duration like '500ms', '1s' or '2 minutes'"
        ))
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.as_str() {
        "ms" | "millisecond" | "milliseconds" => n / 1000.0,
        "" | "s" | "sec" | "second" | "seconds" => n,
        "m" | "min" | "minute" | "minutes" => n * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// A cursor statement; None for anything else.
pub fn parse(sql: &str) -> Result<Option<CursorStatement>, SqlError> {
    let all = tokens(sql)?;
    let idx: Vec<usize> = (0..all.len())
        .filter(|&i| meaningful(&all[i]) && all[i] != Token::SemiColon)
        .collect();
    let t: Vec<&Token> = idx.iter().map(|&i| &all[i]).collect();
    let word = |k: usize, w: &str| t.get(k).is_some_and(|t| is_word(t, w));
    if word(0, "DECLARE") {
        let name = name_of(t.get(1).copied())?;
        let mut k = 2;
        while k < t.len() && !word(k, "CURSOR") {
            if word(k, "BINARY") {
                return Err(SqlError::unsupported("a BINARY cursor")
                    .with_hint("declare the cursor without BINARY"));
            }
            if word(k, "SCROLL") && !word(k.wrapping_sub(1), "NO") {
                return Err(SqlError::new(
                    "0A000",
                    "SCROLL cursors are not supported: cursors here move forward only",
                ));
            }
            if !(word(k, "ASENSITIVE")
                || word(k, "INSENSITIVE")
                || word(k, "NO")
                || word(k, "SCROLL"))
            {
                return Err(SqlError::syntax(format!("unexpected {} in DECLARE", t[k])));
            }
            k += 1;
        }
        k += 1; // CURSOR
        if word(k, "WITH") || word(k, "WITHOUT") {
            if !word(k + 1, "HOLD") {
                return Err(SqlError::syntax("expected HOLD after WITH or WITHOUT"));
            }
            k += 2;
        }
        if !word(k, "FOR") || k + 1 >= t.len() {
            return Err(SqlError::syntax("expected DECLARE name CURSOR FOR <query>"));
        }
        let query = text(&all[idx[k + 1]..]);
        let query = query.trim().trim_end_matches(';').trim().to_string();
        return Ok(Some(CursorStatement::Declare { name, query }));
    }
    if word(0, "CLOSE") {
        return match t.len() {
            2 if word(1, "ALL") => Ok(Some(CursorStatement::Close { name: None })),
            2 => Ok(Some(CursorStatement::Close {
                name: Some(name_of(t.get(1).copied())?),
            })),
            _ => Err(SqlError::syntax("expected CLOSE name or CLOSE ALL")),
        };
    }
    if !word(0, "FETCH") {
        return Ok(None);
    }
    let mut k = 1;
    let mut count = Some(1);
    if word(k, "NEXT") {
        k += 1;
    } else if word(k, "ALL") {
        count = None;
        k += 1;
    } else if word(k, "FORWARD") {
        k += 1;
        if word(k, "ALL") {
            count = None;
            k += 1;
        } else if let Some(Token::Number(..)) = t.get(k) {
            count = Some(count_of(t[k])?);
            k += 1;
        }
    } else if let Some(Token::Number(..)) = t.get(k) {
        count = Some(count_of(t[k])?);
        k += 1;
    } else if let Some(Token::Minus) = t.get(k) {
        return Err(forward_only("backward"));
    } else {
        for w in ["PRIOR", "FIRST", "LAST", "ABSOLUTE", "RELATIVE", "BACKWARD"] {
            if word(k, w) {
                return Err(forward_only(w));
            }
        }
    }
    if word(k, "FROM") || word(k, "IN") {
        k += 1;
    }
    let name = name_of(t.get(k).copied())?;
    k += 1;
    let mut timeout = None;
    if word(k, "WITH") {
        // WITH (timeout = '1s')
        match &t[k + 1..] {
            [Token::LParen, key, Token::Eq, Token::SingleQuotedString(v), Token::RParen]
                if is_word(key, "TIMEOUT") =>
            {
                timeout = Some(duration_of(v)?);
            }
            _ => return Err(SqlError::syntax("expected FETCH ... WITH (timeout = '1s')")),
        }
    } else if k < t.len() {
        return Err(SqlError::syntax(format!(
            "unexpected {} after the cursor name",
            t[k]
        )));
    }
    Ok(Some(CursorStatement::Fetch {
        name,
        count,
        timeout,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fetch(sql: &str) -> (String, Option<usize>, Option<Duration>) {
        match parse(sql).unwrap().unwrap() {
            CursorStatement::Fetch {
                name,
                count,
                timeout,
            } => (name, count, timeout),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cursor_statements_parse_like_postgres() {
        assert_eq!(
            parse("DECLARE \"C1\" NO SCROLL CURSOR WITH HOLD FOR SELECT a FROM s EMIT CHANGES;")
                .unwrap(),
            Some(CursorStatement::Declare {
                name: "C1".into(),
                query: "SELECT a FROM s EMIT CHANGES".into()
            })
        );
        assert_eq!(
            parse("declare c cursor for select 1").unwrap(),
            Some(CursorStatement::Declare {
                name: "c".into(),
                query: "select 1".into()
            })
        );
        assert_eq!(fetch("FETCH c"), ("c".into(), Some(1), None));
        assert_eq!(fetch("FETCH NEXT FROM c"), ("c".into(), Some(1), None));
        assert_eq!(fetch("FETCH 10 IN C"), ("c".into(), Some(10), None));
        assert_eq!(fetch("FETCH FORWARD 5 FROM c"), ("c".into(), Some(5), None));
        assert_eq!(fetch("FETCH FORWARD ALL FROM c"), ("c".into(), None, None));
        assert_eq!(
            fetch("FETCH ALL c WITH (timeout = '250ms')"),
            ("c".into(), None, Some(Duration::from_millis(250)))
        );
        assert_eq!(
            fetch("FETCH 3 c WITH (TIMEOUT = '2 seconds')").2,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse("CLOSE ALL").unwrap(),
            Some(CursorStatement::Close { name: None })
        );
        assert_eq!(
            parse("close C").unwrap(),
            Some(CursorStatement::Close {
                name: Some("c".into())
            })
        );
        assert_eq!(parse("SELECT 1").unwrap(), None);
        assert_eq!(
            parse("DECLARE c SCROLL CURSOR FOR SELECT 1")
                .unwrap_err()
                .code,
            "0A000"
        );
        assert_eq!(parse("FETCH PRIOR FROM c").unwrap_err().code, "0A000");
        assert_eq!(parse("FETCH -1 FROM c").unwrap_err().code, "0A000");
        assert_eq!(
            parse("FETCH 1 c WITH (timeout = 'soon')").unwrap_err().code,
            "22023"
        );
        assert_eq!(
            parse("DECLARE c CURSOR SELECT 1").unwrap_err().code,
            "42601"
        );
    }
}
