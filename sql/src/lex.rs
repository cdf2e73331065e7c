//! Token-level helpers for the statements Sediment recognises before the
//! SQL parser sees them (ksqlDB clauses DataFusion does not know).

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::SqlError;

/// Tokens of `sql`, whitespace included (text is rebuilt from them).
pub(crate) fn tokens(sql: &str) -> Result<Vec<Token>, SqlError> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| SqlError::syntax(e.to_string()))
}

/// An unquoted word, case-insensitively.
pub(crate) fn is_word(t: &Token, word: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// Anything but whitespace (comments included in whitespace).
pub(crate) fn meaningful(t: &Token) -> bool {
    !matches!(t, Token::Whitespace(_))
}

/// The text of `tokens`, as written.
pub(crate) fn text(tokens: &[Token]) -> String {
    tokens.iter().map(Token::to_string).collect()
}
