//! A tiny deterministic PRNG (SplitMix64) owned by this crate.
//!
//! Training must give bit-identical models for a given seed on every build,
//! so the random stream cannot depend on a third-party crate's version or
//! algorithm choice. SplitMix64 is small, fast, passes BigCrush, and its whole
//! state is one `u64`, which keeps derived streams trivial to reproduce.

/// SplitMix64 (Steele, Lea, Flood 2014), as in Vigna's reference code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for an independent sub-stream: `seed` mixed with a
    /// `stream` label (e.g. "init" or an epoch number), so that every epoch's
    /// shuffle can be regenerated from `(seed, epoch)` alone on resume.
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut mixer = Self::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        // One extra round so that nearby (seed, stream) pairs diverge fully.
        let s = mixer.next_u64();
        Self::new(s)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)` with 53 random bits (exact, no rounding).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform float in `[-limit, limit)`.
    pub fn uniform_symmetric(&mut self, limit: f64) -> f64 {
        (2.0 * self.next_f64() - 1.0) * limit
    }

    /// A uniform integer in `[0, n)` for `n >= 1`, without modulo bias
    /// (Lemire's multiply-shift with rejection).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_splitmix64() {
        // Reference values of SplitMix64 seeded with 1234567 (from Vigna's C code).
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn below_and_shuffle_are_in_range_and_permute() {
        let mut r = SplitMix64::derive(42, 7);
        for n in 1..50u64 {
            assert!(r.below(n) < n);
        }
        let mut v: Vec<usize> = (0..100).collect();
        r.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
        let f = r.next_f64();
        assert!((0.0..1.0).contains(&f));
    }
}
