//! Key sets of hot segments, for lookups by record key.
//!
//! A query `WHERE key = ...` over the hot tier would otherwise decode every
//! record of every segment in its range. Each segment can carry the 64-bit
//! hashes of its records' keys ([`KeySet`]): built from the segment's
//! committed batches the first time a key lookup reaches it, extended
//! (only the new batches read) as an active segment grows, and dropped,
//! oldest built first, when all sets together pass [`KeyCache`]'s budget.
//! They live in memory only: nothing here is written to disk, so there is
//! no format to version, and a set lost to eviction or a restart is rebuilt
//! on the next lookup.
//!
//! A set answers "may hold": equal hashes of different keys make a segment
//! read for nothing, never skipped. Records with a null key are not in it.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::segment::Segment;

/// The hash of a record key as [`KeySet`]s store it. Stable within one
/// process (sets are never persisted).
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// The key hashes of one segment's offsets `[base, next_offset)`.
#[derive(Default)]
pub struct KeySet {
    /// Offsets below this are covered (a batch boundary).
    pub next_offset: i64,
    /// Sorted, distinct.
    hashes: Vec<u64>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeySet({} keys below offset {})",
            self.hashes.len(),
            self.next_offset
        )
    }
}

impl KeySet {
    pub fn new(base_offset: i64) -> Self {
        KeySet {
            next_offset: base_offset,
            hashes: Vec::new(),
        }
    }

    pub fn contains(&self, hash: u64) -> bool {
        self.hashes.binary_search(&hash).is_ok()
    }

    /// Adds the hashes of the keys of offsets `[self.next_offset, next)`.
    pub fn extend(&mut self, mut added: Vec<u64>, next: i64) {
        added.sort_unstable();
        added.dedup();
        if self.hashes.is_empty() {
            self.hashes = added;
        } else if !added.is_empty() {
            let old = std::mem::take(&mut self.hashes);
            let mut merged = Vec::with_capacity(old.len() + added.len());
            let (mut a, mut b) = (old.into_iter().peekable(), added.into_iter().peekable());
            while let (Some(&x), Some(&y)) = (a.peek(), b.peek()) {
                if x <= y {
                    merged.push(x);
                    a.next();
                    if x == y {
                        b.next();
                    }
                } else {
                    merged.push(y);
                    b.next();
                }
            }
            merged.extend(a);
            merged.extend(b);
            self.hashes = merged;
        }
        self.next_offset = self.next_offset.max(next);
    }

    /// Memory held, for the cache's budget.
    pub fn bytes(&self) -> usize {
        self.hashes.capacity() * std::mem::size_of::<u64>() + std::mem::size_of::<Self>()
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// Bounds the memory of all segments' key sets: a segment whose set was
/// built or grew goes to the back; while the total is over the budget, the
/// sets at the front are dropped (the most recent one is always kept, so a
/// lookup can use the set it just built).
#[derive(Debug)]
pub struct KeyCache {
    budget: usize,
    order: Mutex<VecDeque<Weak<Segment>>>,
}

impl KeyCache {
    pub fn new(budget_bytes: usize) -> Self {
        KeyCache {
            budget: budget_bytes,
            order: Mutex::new(VecDeque::new()),
        }
    }

    /// Bytes held by the key sets of live segments.
    pub fn used_bytes(&self) -> usize {
        self.order
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| s.key_bytes.load(Ordering::Acquire))
            .sum()
    }

    /// Accounts `seg`'s set (just built or extended, its lock released) and
    /// evicts the oldest sets while over the budget.
    pub fn admit(&self, seg: &Arc<Segment>) {
        let mut order = self.order.lock();
        order.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(seg)));
        order.push_back(Arc::downgrade(seg));
        let mut used: usize = order
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| s.key_bytes.load(Ordering::Acquire))
            .sum();
        let mut i = 0;
        while used > self.budget && i + 1 < order.len() {
            let Some(s) = order[i].upgrade() else {
                order.remove(i);
                continue;
            };
            // A set being built or read right now stays; try the next.
            let dropped = match s.keys.try_lock() {
                Some(mut slot) => {
                    *slot = None;
                    true
                }
                None => false,
            };
            if dropped {
                used = used.saturating_sub(s.key_bytes.swap(0, Ordering::AcqRel));
                order.remove(i);
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_key_set_merges_extensions_and_answers_membership() {
        let mut s = KeySet::new(10);
        assert!(!s.contains(key_hash(b"a")));
        s.extend(vec![key_hash(b"b"), key_hash(b"a"), key_hash(b"a")], 20);
        assert_eq!((s.len(), s.next_offset), (2, 20));
        s.extend(vec![key_hash(b"c"), key_hash(b"a")], 25);
        assert_eq!((s.len(), s.next_offset), (3, 25));
        for k in [&b"a"[..], b"b", b"c"] {
            assert!(s.contains(key_hash(k)));
        }
        assert!(!s.contains(key_hash(b"d")));
        assert!(!s.contains(key_hash(b"")));
        // Sorted and distinct after the merge.
        assert!(s.hashes.windows(2).all(|w| w[0] < w[1]));
    }
}
