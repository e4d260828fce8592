//! Small deterministic random number generators for tests and benchmark workloads: the same
//! seed gives the same numbers on every platform and version, so a seed printed by CI replays
//! the run here. No dependency, and not for anything that needs real randomness.

/// splitmix64 (Steele, Lea, Flood 2014): every seed is usable, zero included.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    // `next` as the callers have always written it; not an iterator (it never ends).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// xorshift64* (Vigna 2016): the state must not be zero (a zero seed gives zeros forever).
#[derive(Debug, Clone)]
pub struct XorShift64Star(pub u64);

impl XorShift64Star {
    // `next` as the callers have always written it; not an iterator (it never ends).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The integer types a draw is asked in (`below(3)` gives whatever type the call site needs).
pub trait Bound: Copy {
    fn to_u64(self) -> u64;
    fn from_u64(v: u64) -> Self;
}

macro_rules! bound {
    ($($t:ty),*) => {$(
        impl Bound for $t {
            fn to_u64(self) -> u64 {
                self as u64
            }
            fn from_u64(v: u64) -> Self {
                v as $t
            }
        }
    )*};
}
bound!(u8, u16, u32, u64, usize, i32);

/// What tests draw from either generator, written once.
pub trait Draw {
    fn next_u64(&mut self) -> u64;

    /// A number in `0..n` (`n` > 0).
    fn below<N: Bound>(&mut self, n: N) -> N {
        N::from_u64(self.next_u64() % n.to_u64())
    }

    /// True `percent` times in 100.
    fn chance<N: Bound>(&mut self, percent: N) -> bool {
        self.next_u64() % 100 < percent.to_u64()
    }

    fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

impl Draw for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.next()
    }
}

impl Draw for XorShift64Star {
    fn next_u64(&mut self) -> u64 {
        self.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequences_are_the_published_ones() {
        // splitmix64 from seed 0: the reference implementation's first outputs.
        let mut s = SplitMix64(0);
        assert_eq!([s.next(), s.next()], [0xe220_a839_7b1d_cdaf, 0x6e78_9e6a_a1b9_65f4]);
        // xorshift64* from seed 1, worked by hand from the three shifts and the multiplier.
        let mut x = XorShift64Star(1);
        let mut state: u64 = 1;
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        assert_eq!(x.next(), state.wrapping_mul(0x2545_f491_4f6c_dd1d));
    }

    #[test]
    fn draws_stay_in_range() {
        let mut r = SplitMix64(7);
        for n in 1..200u64 {
            assert!(r.below(n) < n);
            assert!(r.below(n as usize) < n as usize);
        }
        assert!(!r.chance(0u64));
        assert!(r.chance(100usize));
    }
}
