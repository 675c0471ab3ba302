//! The weighted load of a pod (wire contract §2): its bound, the cpu factor in fixed point, and
//! the exact formula.

use std::fmt;

/// The largest weighted load, 2^53 − 1. Loads saturate here everywhere (writers, readers, the
/// Lua scripts), so every comparison is exact: Lua numbers and Redis sorted-set scores are
/// doubles, which hold every integer up to 2^53 and no longer all of them above.
pub const MAX_LOAD: u64 = (1 << 53) - 1;

/// The weight of waiting tasks against the load state, in millionths (0 ..= 1 000 000), so the
/// weighting is integer arithmetic and its result is exactly the documented formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CpuFactor(u32);

impl CpuFactor {
    /// The fixed-point scale: 1.0 = 1 000 000.
    pub const SCALE: u32 = 1_000_000;
    /// The default, 0.7.
    pub const DEFAULT: CpuFactor = CpuFactor(700_000);

    /// A factor given in millionths; `None` above 1 000 000.
    pub fn from_ppm(ppm: u32) -> Option<Self> {
        (ppm <= Self::SCALE).then_some(CpuFactor(ppm))
    }

    /// A factor given as a number between 0 and 1, rounded to millionths (a CRD value like 0.9
    /// is exactly 900 000). Values outside [0, 1] are clamped and NaN counts as 0: the CRD and
    /// the configuration reject them before they get here.
    pub fn from_f64(f: f64) -> Self {
        let f = if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
        CpuFactor((f * f64::from(Self::SCALE)).round() as u32)
    }

    /// The factor in millionths.
    pub fn ppm(self) -> u32 {
        self.0
    }
}

impl Default for CpuFactor {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for CpuFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / Self::SCALE, self.0 % Self::SCALE)
    }
}

/// weightedLoad = trunc(cpuFactor × waitingTasks + (1 − cpuFactor) × loadState), exactly, with
/// cpuFactor in millionths; both inputs saturate at [`MAX_LOAD`] first, so the result is at most
/// [`MAX_LOAD`] too (it lies between the two inputs).
pub fn weighted_load(cpu: CpuFactor, waiting_tasks: u64, load_state: u64) -> u64 {
    let (w, l) = (u128::from(waiting_tasks.min(MAX_LOAD)), u128::from(load_state.min(MAX_LOAD)));
    let (p, scale) = (u128::from(cpu.0), u128::from(CpuFactor::SCALE));
    // At most 10^6 × 2^53 < 2^73: no overflow in u128.
    ((p * w + (scale - p) * l) / scale) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cpu(f: f64) -> CpuFactor {
        CpuFactor::from_f64(f)
    }

    #[test]
    fn the_formula_holds_exactly() {
        assert_eq!(weighted_load(cpu(0.7), 100, 200), 130); // 70 + 60
        assert_eq!(weighted_load(cpu(0.0), 100, 200), 200);
        assert_eq!(weighted_load(cpu(1.0), 100, 200), 100);
        assert_eq!(weighted_load(cpu(0.5), 3, 0), 1, "1.5 truncates");
        // 0.9 × 10 + 0.1 × 1000 = 109 exactly; in f64 arithmetic 0.1 is 0.0999… and gives 108.
        assert_eq!(weighted_load(cpu(0.9), 10, 1000), 109);
        assert_eq!(weighted_load(cpu(0.7), 10, 100), 37);
        // The original's bug, cpu*wait + (1 - cpu*load), decreases with load; ours grows.
        assert!(weighted_load(cpu(0.5), 0, 1000) > weighted_load(cpu(0.5), 0, 10));
    }

    #[test]
    fn inputs_and_result_saturate_at_the_exact_bound() {
        assert_eq!(MAX_LOAD, 9_007_199_254_740_991);
        assert_eq!(weighted_load(cpu(0.0), 0, u64::MAX), MAX_LOAD);
        assert_eq!(weighted_load(cpu(1.0), u64::MAX, 0), MAX_LOAD);
        assert_eq!(weighted_load(cpu(0.3), u64::MAX, u64::MAX), MAX_LOAD);
        assert_eq!(weighted_load(cpu(0.0), 0, MAX_LOAD), MAX_LOAD);
        assert_eq!(weighted_load(cpu(0.0), 0, MAX_LOAD - 1), MAX_LOAD - 1);
    }

    #[test]
    fn factors_are_millionths() {
        assert_eq!(cpu(0.9).ppm(), 900_000);
        assert_eq!(cpu(0.123_456_7).ppm(), 123_457, "rounded to millionths");
        assert_eq!(cpu(2.0).ppm(), 1_000_000, "clamped");
        assert_eq!(cpu(-1.0).ppm(), 0, "clamped");
        assert_eq!(cpu(f64::NAN).ppm(), 0);
        assert_eq!(CpuFactor::from_ppm(1_000_000), Some(cpu(1.0)));
        assert_eq!(CpuFactor::from_ppm(1_000_001), None);
        assert_eq!(CpuFactor::default().to_string(), "0.700000");
        assert_eq!(cpu(1.0).to_string(), "1.000000");
    }

    proptest! {
        /// The defining property of truncation, stated without the division: the result r is
        /// the integer with r ≤ cpu·w + (1 − cpu)·l < r + 1, i.e. (scaled by 10^6)
        /// r·10^6 ≤ ppm·w + (10^6 − ppm)·l < (r + 1)·10^6; and it lies between the inputs.
        #[test]
        fn is_the_truncated_exact_value(ppm in 0u32..=1_000_000, w in 0u64..=MAX_LOAD, l in 0u64..=MAX_LOAD) {
            let r = u128::from(weighted_load(CpuFactor::from_ppm(ppm).unwrap(), w, l));
            let exact_scaled = u128::from(ppm) * u128::from(w) + u128::from(1_000_000 - ppm) * u128::from(l);
            prop_assert!(r * 1_000_000 <= exact_scaled && exact_scaled < (r + 1) * 1_000_000);
            prop_assert!(r >= u128::from(w.min(l)) && r <= u128::from(w.max(l)));
        }
    }
}
