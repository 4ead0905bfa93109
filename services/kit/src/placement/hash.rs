//! Jump consistent hash (Lamping & Veach, 2014): with a stable 64-bit hash (xxh3) of an id,
//! ids spread evenly and the mapping is the same on every process and every platform.

/// Maps `key` to a bucket in `0..buckets`; moving from n to n+1 buckets relocates only 1/(n+1) of keys.
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    debug_assert!(buckets > 0, "at least one bucket");
    let buckets = i64::from(buckets.max(1));
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < buckets {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let divisor = ((key >> 33) + 1) as f64;
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / divisor)) as i64;
    }
    bucket as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_64;

    fn shard_for_document(doc_id: &str, shards: u32) -> u32 {
        jump_consistent_hash(xxh3_64(doc_id.as_bytes()), shards)
    }

    #[test]
    fn one_bucket_takes_everything_and_results_are_in_range() {
        for key in 0..1000u64 {
            assert_eq!(jump_consistent_hash(key, 1), 0);
            assert!(jump_consistent_hash(key, 7) < 7);
        }
    }

    #[test]
    fn ids_spread_evenly() {
        let mut counts = [0u32; 4];
        for number in 0..8000 {
            counts[shard_for_document(&format!("doc-{number}"), 4) as usize] += 1;
        }
        for count in counts {
            assert!((1700..2300).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn growing_the_cluster_moves_few_documents() {
        let moved = (0..10_000)
            .filter(|number| {
                let id = format!("doc-{number}");
                shard_for_document(&id, 10) != shard_for_document(&id, 11)
            })
            .count();
        // Ideal is 1/11 of the keys, about 909.
        assert!((700..1100).contains(&moved), "{moved}");
    }

    #[test]
    fn matches_the_reference_implementation() {
        // Vectors of the reference jump hash (as in the Go port's tests).
        assert_eq!(jump_consistent_hash(1, 1), 0);
        assert_eq!(jump_consistent_hash(42, 57), 43);
        assert_eq!(jump_consistent_hash(0xDEAD_10CC, 1), 0);
        assert_eq!(jump_consistent_hash(0xDEAD_10CC, 666), 361);
        assert_eq!(jump_consistent_hash(256, 1024), 520);
    }
}
