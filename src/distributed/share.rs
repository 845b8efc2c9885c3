//! Which of a step's videos a rank takes.

use std::ops::Range;

/// The videos of a step of `count` (indices in the step) that `rank` of `size` takes:
/// consecutive, disjoint, covering all of them, the first `count % size` ranks one more.
/// Deterministic, so every rank knows every other rank's share.
pub fn share(count: usize, rank: usize, size: usize) -> Range<usize> {
    let size = size.max(1);
    let (base, extra) = (count / size, count % size);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start.min(count)..(start + len).min(count)
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_are_disjoint_and_cover_the_step() {
        for count in 0..12 {
            for size in 1..6 {
                let mut next = 0;
                for rank in 0..size {
                    let r = share(count, rank, size);
                    assert_eq!(r.start, next, "count {count} size {size} rank {rank}");
                    let lens = (count / size, count.div_ceil(size));
                    assert!(r.len() == lens.0 || r.len() == lens.1);
                    next = r.end;
                }
                assert_eq!(next, count);
            }
        }
        assert_eq!(share(2, 0, 2), 0..1);
        assert_eq!(share(2, 1, 2), 1..2);
        assert_eq!(share(1, 1, 2), 1..1);
    }
}
