//! Choosing a partition for a record that names none.
//!
//! - **Keyed records** go to `(murmur2(key) & 0x7fffffff) % partitions`: the same hash and the
//!   same arithmetic as Kafka's default partitioner (MurmurHash2, 32-bit, seed `0x9747b28c`), so
//!   a key maps to the same partition in Weir as in Kafka for the same partition count, and the
//!   mapping never changes between client versions. It changes when the partition count does.
//! - **Keyless records** stick to one partition until the batch they join is closed (sent or
//!   full), then the producer picks another at random. Batches fill up instead of spreading a
//!   few records over every partition (Kafka's KIP-480).

use rand::Rng;

const SEED: u32 = 0x9747_b28c;
const M: u32 = 0x5bd1_e995;
const R: u32 = 24;

/// MurmurHash2 (32-bit), byte for byte as Kafka's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> u32 {
    let length = data.len();
    // Kafka computes `seed ^ length` with a Java int; truncating the length is the same thing.
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
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
    h
}

/// The partition of a keyed record.
///
/// # Panics
/// If `partitions` is 0: every topic has at least one partition, so that is a caller's bug.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// A random partition for keyless records, different from `avoid` when there is a choice.
pub(crate) fn next_sticky(partitions: u32, avoid: Option<u32>) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    let mut rng = rand::thread_rng();
    match avoid {
        Some(current) if partitions > 1 && current < partitions => {
            (current + rng.gen_range(1..partitions)) % partitions
        }
        _ => rng.gen_range(0..partitions),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's `UtilsTest.testMurmur2`, as Java ints.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input) as i32, expected, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn key_partitioning_is_stable_and_in_range() {
        for partitions in 1..20 {
            for key in 0..200u32 {
                let key = key.to_string();
                let partition = partition_for_key(key.as_bytes(), partitions);
                assert!(partition < partitions);
                assert_eq!(partition, partition_for_key(key.as_bytes(), partitions));
            }
        }
        // Pinned values: a change here moves keys between partitions for every user.
        assert_eq!(
            partition_for_key(b"foobar", 7),
            (-790_332_482i32 as u32 & 0x7fff_ffff) % 7
        );
        assert_eq!(partition_for_key(b"", 3), (murmur2(b"") & 0x7fff_ffff) % 3);
    }

    #[test]
    fn sticky_moves_away_when_it_can() {
        for _ in 0..100 {
            assert_ne!(next_sticky(4, Some(2)), 2);
            assert!(next_sticky(4, None) < 4);
            assert_eq!(next_sticky(1, Some(0)), 0);
            assert!(next_sticky(3, Some(9)) < 3);
        }
    }
}
