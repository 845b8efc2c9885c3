//! The one way this crate derives seeds: every per-step, per-epoch, per-stage or per-block seed
//! is `mix(parent, counter)`, so streams never collide and a run replays exactly on resume.

/// Deterministic 64-bit mix of a seed and a counter (splitmix64's finaliser).
pub(crate) fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed
        ^ n.wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::mix;
    use std::collections::HashSet;

    #[test]
    fn neighbouring_seeds_and_counters_give_distinct_streams() {
        let mut seen = HashSet::new();
        for seed in 0..64 {
            for n in 0..64 {
                assert!(seen.insert(mix(seed, n)), "collision at seed {seed}, n {n}");
            }
        }
        assert_eq!(mix(7, 3), mix(7, 3));
    }
}
