//! Partition choice, compatible with the Java client's default partitioner.
//!
//! Keyed records go to `toPositive(murmur2(key)) % partitions`, exactly as
//! `org.apache.kafka.clients.producer.internals.BuiltInPartitioner` does
//! (and librdkafka's `murmur2_random`), so records produced here land in the
//! same partition as records with the same key from a Java producer.
//! Unkeyed records stick to one partition until its batch is full, then move
//! to the next (the "sticky" partitioner, which yields full batches).

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with seed `0x9747b28c`,
/// reading little-endian 4-byte blocks, as Java computes it with wrapping
/// `int` arithmetic.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java's `seed ^ length` with an int length: the length wraps to 32 bits.
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`).
pub fn to_positive(n: i32) -> i32 {
    n & 0x7fff_ffff
}

/// The partition the Java client picks for `key` among `num_partitions`.
pub fn partition_for_key(key: &[u8], num_partitions: i32) -> i32 {
    debug_assert!(num_partitions > 0);
    to_positive(murmur2(key)) % num_partitions.max(1)
}

/// Chooses the partition for unkeyed records: one partition at a time,
/// moving on when its batch is complete.
#[derive(Debug, Clone)]
pub struct StickyPartitioner {
    num_partitions: i32,
    current: i32,
}

impl StickyPartitioner {
    /// Starts at a random partition so concurrent producers spread out.
    pub fn new(num_partitions: i32) -> Self {
        let n = num_partitions.max(1);
        Self::starting_at(n, rand::random_range(0..n))
    }

    /// Starts at `first` (deterministic, for tests).
    pub fn starting_at(num_partitions: i32, first: i32) -> Self {
        let n = num_partitions.max(1);
        StickyPartitioner {
            num_partitions: n,
            current: first.rem_euclid(n),
        }
    }

    /// The partition unkeyed records currently go to.
    pub fn current(&self) -> i32 {
        self.current
    }

    /// Called when the current partition's batch is complete.
    pub fn batch_complete(&mut self) {
        self.current = (self.current + 1) % self.num_partitions;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka_utils_test_vectors() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                *expected,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// Every tail length (0..=3 bytes past a 4-byte block) and high bytes
    /// (Java's `& 0xff` on signed bytes) against a literal port of the Java
    /// code using i32 arithmetic.
    #[test]
    fn murmur2_matches_literal_java_port_on_all_tail_lengths() {
        fn java(data: &[u8]) -> i32 {
            let length = data.len() as i32;
            let seed: i32 = 0x9747_b28c_u32 as i32;
            let m: i32 = 0x5bd1_e995;
            let r = 24;
            let mut h = seed ^ length;
            let length4 = length / 4;
            for i in 0..length4 {
                let i4 = (i * 4) as usize;
                let mut k = (data[i4] as i32 & 0xff)
                    .wrapping_add((data[i4 + 1] as i32 & 0xff) << 8)
                    .wrapping_add((data[i4 + 2] as i32 & 0xff) << 16)
                    .wrapping_add((data[i4 + 3] as i32 & 0xff) << 24);
                k = k.wrapping_mul(m);
                k ^= ((k as u32) >> r) as i32;
                k = k.wrapping_mul(m);
                h = h.wrapping_mul(m);
                h ^= k;
            }
            let base = (length & !3) as usize;
            let rem = length % 4;
            if rem == 3 {
                h ^= (data[base + 2] as i32 & 0xff) << 16;
            }
            if rem >= 2 {
                h ^= (data[base + 1] as i32 & 0xff) << 8;
            }
            if rem >= 1 {
                h ^= data[base] as i32 & 0xff;
                h = h.wrapping_mul(m);
            }
            h ^= ((h as u32) >> 13) as i32;
            h = h.wrapping_mul(m);
            h ^= ((h as u32) >> 15) as i32;
            h
        }
        let data: Vec<u8> = (0..64u32).map(|i| (i * 37 + 200) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(murmur2(&data[..len]), java(&data[..len]), "len {len}");
        }
    }

    #[test]
    fn keyed_partition_uses_to_positive_not_abs() {
        // murmur2("21") is negative: toPositive clears the sign bit.
        let h = murmur2(b"21");
        assert!(h < 0);
        assert_eq!(partition_for_key(b"21", 10), (h & 0x7fff_ffff) % 10);
        assert_ne!(to_positive(h), h.wrapping_abs());
        for n in 1..20 {
            let p = partition_for_key(b"foobar", n);
            assert!((0..n).contains(&p));
        }
    }

    #[test]
    fn sticky_partitioner_moves_on_when_a_batch_completes() {
        let mut s = StickyPartitioner::starting_at(3, 2);
        assert_eq!(s.current(), 2);
        s.batch_complete();
        assert_eq!(s.current(), 0);
        s.batch_complete();
        assert_eq!(s.current(), 1);
        let mut one = StickyPartitioner::new(1);
        one.batch_complete();
        assert_eq!(one.current(), 0);
    }
}
