//! What a query's filters say about partitions, offsets and timestamps:
//! the bounds both tiers prune with (archive files by their manifest
//! statistics, hot segments by the offset and time indexes).
//!
//! Only conjunctions of simple comparisons between a column and a literal
//! are understood; anything else prunes nothing. A filter that is wholly
//! understood ([`Bounds::is_exact`]) is exactly the set of rows within the
//! bounds, so a topic scan can take it over from DataFusion: it reads row
//! groups and hot ranges that lie wholly inside the bounds without testing
//! a row, and filters only the ones that straddle a bound.

use std::collections::BTreeSet;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};

/// Bounds on the raw columns `partition`, `offset` and `timestamp` (ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    /// `None`: every partition.
    pub partitions: Option<BTreeSet<i32>>,
    /// Offsets in `[offset_lo, offset_hi)`.
    pub offset_lo: i64,
    pub offset_hi: i64,
    /// Timestamps in `[ts_lo, ts_hi]` (ms since the epoch).
    pub ts_lo: i64,
    pub ts_hi: i64,
    /// `None`: any key. Otherwise only rows whose `key` is one of these can
    /// match (from `key = ...` and `key IN (...)`). Never exact: it prunes
    /// hot segments by their key sets, and the rows are still filtered.
    pub keys: Option<BTreeSet<Vec<u8>>>,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            partitions: None,
            offset_lo: 0,
            offset_hi: i64::MAX,
            ts_lo: i64::MIN,
            ts_hi: i64::MAX,
            keys: None,
        }
    }
}

impl Bounds {
    /// Bounds implied by `filters` (ANDed) over columns named `partition`,
    /// `offset` and `timestamp`.
    pub fn from_filters(filters: &[Expr]) -> Self {
        let mut b = Bounds::default();
        for f in filters {
            for e in split_conjunction(f) {
                b.apply(e);
            }
        }
        b
    }

    /// True when no row can match.
    pub fn is_empty(&self) -> bool {
        self.offset_lo >= self.offset_hi
            || self.ts_lo > self.ts_hi
            || self.partitions.as_ref().is_some_and(BTreeSet::is_empty)
            || self.keys.as_ref().is_some_and(BTreeSet::is_empty)
    }

    pub fn has_partition(&self, p: i32) -> bool {
        self.partitions.as_ref().is_none_or(|s| s.contains(&p))
    }

    /// Whether a range of offsets `[base, next)` whose timestamps lie in
    /// `[min_ts, max_ts]` can hold a matching row.
    pub fn overlaps(&self, base: i64, next: i64, min_ts: i64, max_ts: i64) -> bool {
        base < self.offset_hi
            && next > self.offset_lo
            && max_ts >= self.ts_lo
            && min_ts <= self.ts_hi
    }

    /// Whether every row of such a range matches (of a partition the
    /// bounds keep).
    pub fn contains(&self, base: i64, next: i64, min_ts: i64, max_ts: i64) -> bool {
        base >= self.offset_lo
            && next <= self.offset_hi
            && min_ts >= self.ts_lo
            && max_ts <= self.ts_hi
    }

    /// Whether the time bounds exclude any timestamp.
    pub fn bounds_time(&self) -> bool {
        self.ts_lo > i64::MIN || self.ts_hi < i64::MAX
    }

    /// Whether `filter` is wholly understood: a row matches it exactly
    /// when it lies within the bounds the filter implies.
    pub fn is_exact(filter: &Expr) -> bool {
        let mut b = Bounds::default();
        split_conjunction(filter).into_iter().all(|e| b.apply(e))
    }

    /// Narrows the bounds by `e`; true when `e` is exactly those bounds.
    fn apply(&mut self, e: &Expr) -> bool {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) if key_column(left) || key_column(right) => {
                let value = if key_column(left) { right } else { left };
                if let Some(k) = bytes_literal(value) {
                    self.restrict_keys(BTreeSet::from([k]));
                }
                false
            }
            Expr::BinaryExpr(BinaryExpr {
                op: Operator::Or, ..
            }) => {
                // `key = a OR key = b ...` (what DataFusion makes of a short
                // `key IN (...)`).
                if let Some(keys) = key_alternatives(e) {
                    self.restrict_keys(keys);
                }
                false
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if let (Some(col), Some(v)) = (column(left), literal(right)) {
                    self.compare(col, *op, v)
                } else if let (Some(v), Some(col)) = (literal(left), column(right)) {
                    op.swap().is_some_and(|op| self.compare(col, op, v))
                } else {
                    false
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => {
                if let (Some(col), Some(lo), Some(hi)) = (column(expr), literal(low), literal(high))
                {
                    // Both sides, even when the first is not understood.
                    let low = self.compare(col, Operator::GtEq, lo);
                    let high = self.compare(col, Operator::LtEq, hi);
                    low && high
                } else {
                    false
                }
            }
            Expr::InList(list) if !list.negated && key_column(&list.expr) => {
                let keys: Option<BTreeSet<Vec<u8>>> = list.list.iter().map(bytes_literal).collect();
                if let Some(keys) = keys {
                    self.restrict_keys(keys);
                }
                false
            }
            Expr::InList(list) if !list.negated && column(&list.expr) == Some("partition") => {
                // Values that are no partition number match no partition.
                let values: Option<BTreeSet<i32>> = list
                    .list
                    .iter()
                    .map(|v| literal(v).map(|v| i32::try_from(v).ok()))
                    .collect::<Option<Vec<_>>>()
                    .map(|v| v.into_iter().flatten().collect());
                match values {
                    Some(values) => {
                        self.restrict_partitions(values);
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }

    /// Narrows by `col op v`; true when that is exactly the bound.
    fn compare(&mut self, col: &str, op: Operator, v: i64) -> bool {
        match col {
            "offset" => narrow(&mut self.offset_lo, &mut self.offset_hi, op, v),
            "timestamp" => {
                // Inclusive upper bound here: turn `< v` into `<= v - 1`.
                let mut hi = self.ts_hi.saturating_add(1);
                let exact = narrow(&mut self.ts_lo, &mut hi, op, v);
                self.ts_hi = hi.saturating_sub(1);
                exact
            }
            "partition" if op == Operator::Eq => {
                // An out-of-range partition number matches no partition.
                let p = i32::try_from(v).ok();
                self.restrict_partitions(p.into_iter().collect());
                true
            }
            _ => false,
        }
    }

    fn restrict_keys(&mut self, values: BTreeSet<Vec<u8>>) {
        self.keys = Some(match self.keys.take() {
            None => values,
            Some(s) => s.intersection(&values).cloned().collect(),
        });
    }

    fn restrict_partitions(&mut self, values: BTreeSet<i32>) {
        self.partitions = Some(match self.partitions.take() {
            None => values,
            Some(s) => s.intersection(&values).copied().collect(),
        });
    }
}

/// Narrows a half-open `[lo, hi)` range by `col op v`; true when the
/// range is exactly `op v` (a saturated bound at the end of the `i64`
/// range is not).
fn narrow(lo: &mut i64, hi: &mut i64, op: Operator, v: i64) -> bool {
    match op {
        Operator::Eq => {
            *lo = (*lo).max(v);
            *hi = (*hi).min(v.saturating_add(1));
            v < i64::MAX
        }
        Operator::Gt => {
            *lo = (*lo).max(v.saturating_add(1));
            v < i64::MAX
        }
        Operator::GtEq => {
            *lo = (*lo).max(v);
            true
        }
        Operator::Lt => {
            *hi = (*hi).min(v);
            true
        }
        Operator::LtEq => {
            *hi = (*hi).min(v.saturating_add(1));
            v < i64::MAX
        }
        _ => false,
    }
}

fn column(e: &Expr) -> Option<&str> {
    match e {
        // A cast column is not a bound (a narrowing cast wraps); DataFusion
        // casts the literal instead wherever it can.
        Expr::Column(c) => Some(c.name.as_str()),
        _ => None,
    }
}

/// The keys of a disjunction whose every term is `key = literal`.
fn key_alternatives(e: &Expr) -> Option<BTreeSet<Vec<u8>>> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut keys = key_alternatives(left)?;
            keys.extend(key_alternatives(right)?);
            Some(keys)
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) if key_column(left) => bytes_literal(right).map(|k| BTreeSet::from([k])),
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) if key_column(right) => bytes_literal(left).map(|k| BTreeSet::from([k])),
        _ => None,
    }
}

fn key_column(e: &Expr) -> bool {
    column(e) == Some("key")
}

/// The bytes of a binary or text literal (a key compared as bytes); a NULL
/// or other literal gives none.
fn bytes_literal(e: &Expr) -> Option<Vec<u8>> {
    let Expr::Literal(v, _) = e else {
        return None;
    };
    match v {
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b))
        | ScalarValue::FixedSizeBinary(_, Some(b)) => Some(b.clone()),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

/// Integers and timestamps (as milliseconds) from a literal.
fn literal(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else {
        return None;
    };
    match v {
        ScalarValue::Int8(Some(x)) => Some(i64::from(*x)),
        ScalarValue::Int16(Some(x)) => Some(i64::from(*x)),
        ScalarValue::Int32(Some(x)) => Some(i64::from(*x)),
        ScalarValue::Int64(Some(x)) => Some(*x),
        ScalarValue::UInt8(Some(x)) => Some(i64::from(*x)),
        ScalarValue::UInt16(Some(x)) => Some(i64::from(*x)),
        ScalarValue::UInt32(Some(x)) => Some(i64::from(*x)),
        ScalarValue::UInt64(Some(x)) => i64::try_from(*x).ok(),
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1000),
        ScalarValue::TimestampMillisecond(Some(x), _) => Some(*x),
        // Sub-millisecond literals bound nothing unless whole milliseconds
        // (rounding either way would cut rows off one side).
        ScalarValue::TimestampMicrosecond(Some(x), _) if x % 1000 == 0 => Some(x / 1000),
        ScalarValue::TimestampNanosecond(Some(x), _) if x % 1_000_000 == 0 => Some(x / 1_000_000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn key_equalities_and_lists_bound_the_keys_but_are_never_exact() {
        let key = |k: &str| lit(ScalarValue::Binary(Some(k.as_bytes().to_vec())));
        let set = |ks: &[&str]| Some(ks.iter().map(|k| k.as_bytes().to_vec()).collect());
        let eq = col("key").eq(key("a"));
        assert_eq!(
            Bounds::from_filters(std::slice::from_ref(&eq)).keys,
            set(&["a"])
        );
        assert!(!Bounds::is_exact(&eq));
        let or = col("key").eq(key("a")).or(key("b").eq(col("key")));
        assert_eq!(Bounds::from_filters(&[or]).keys, set(&["a", "b"]));
        let list = col("key").in_list(vec![key("a"), key("c")], false);
        assert_eq!(
            Bounds::from_filters(std::slice::from_ref(&list)).keys,
            set(&["a", "c"])
        );
        // Conjunctions intersect; nothing left means no row can match.
        let b = Bounds::from_filters(&[list, col("key").eq(key("c"))]);
        assert_eq!(b.keys, set(&["c"]));
        let b = Bounds::from_filters(&[eq, col("key").eq(key("z"))]);
        assert!(b.is_empty());
        // Anything else bounds no key.
        for f in [
            col("key").eq(key("a")).or(col("offset").lt(lit(3i64))),
            col("key").in_list(vec![key("a")], true),
            col("key").not_eq(key("a")),
            col("key").is_null(),
        ] {
            assert_eq!(
                Bounds::from_filters(std::slice::from_ref(&f)).keys,
                None,
                "{f}"
            );
        }
    }

    #[test]
    fn conjunctions_of_comparisons_narrow_the_bounds() {
        let b = Bounds::from_filters(&[
            col("offset")
                .gt_eq(lit(10i64))
                .and(col("offset").lt(lit(20i64))),
            col("partition").eq(lit(1i32)),
            col("timestamp").between(
                lit(ScalarValue::TimestampMillisecond(
                    Some(1000),
                    Some("UTC".into()),
                )),
                lit(ScalarValue::TimestampMillisecond(
                    Some(2000),
                    Some("UTC".into()),
                )),
            ),
        ]);
        assert_eq!((b.offset_lo, b.offset_hi), (10, 20));
        assert_eq!((b.ts_lo, b.ts_hi), (1000, 2000));
        assert_eq!(b.partitions, Some(BTreeSet::from([1])));
        assert!(b.overlaps(15, 16, 1500, 1500));
        assert!(!b.overlaps(20, 30, 1500, 1500));
        assert!(!b.overlaps(10, 20, 2001, 3000));
        assert!(!b.is_empty());
    }

    #[test]
    fn literal_on_the_left_and_contradictions() {
        let b =
            Bounds::from_filters(&[lit(5i64).lt(col("offset")), col("offset").lt_eq(lit(5i64))]);
        assert_eq!((b.offset_lo, b.offset_hi), (6, 6));
        assert!(b.is_empty());
        let b = Bounds::from_filters(&[
            col("partition").in_list(vec![lit(0i32), lit(2i32)], false),
            col("partition").eq(lit(2i32)),
        ]);
        assert_eq!(b.partitions, Some(BTreeSet::from([2])));
    }

    #[test]
    fn exact_filters_are_wholly_bounds() {
        let ts = |ms| {
            lit(ScalarValue::TimestampMillisecond(
                Some(ms),
                Some("UTC".into()),
            ))
        };
        for f in [
            col("offset")
                .gt_eq(lit(10i64))
                .and(col("partition").eq(lit(1i32))),
            col("timestamp").between(ts(1000), ts(2000)),
            col("partition").in_list(vec![lit(0i32), lit(5_000_000_000i64)], false),
            lit(3i64).lt(col("offset")),
        ] {
            assert!(Bounds::is_exact(&f), "{f}");
        }
        for f in [
            col("offset").gt_eq(lit(10i64)).and(col("key").is_null()),
            col("offset").not_eq(lit(7i64)),
            col("partition").lt(lit(2i32)),
            col("offset").lt_eq(lit(i64::MAX)),
            col("timestamp").gt_eq(lit(ScalarValue::TimestampNanosecond(Some(1_500_000), None))),
        ] {
            assert!(!Bounds::is_exact(&f), "{f}");
        }
    }

    #[test]
    fn what_is_not_understood_prunes_nothing() {
        let b = Bounds::from_filters(&[
            col("offset").gt(lit(3i64)).or(col("offset").lt(lit(1i64))),
            col("value").is_null(),
            col("offset").not_eq(lit(7i64)),
        ]);
        assert_eq!(b, Bounds::default());
    }
}
