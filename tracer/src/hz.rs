//! The kernel's tick rate (`CONFIG_HZ`), learnt from the events themselves, so that the idle
//! stamps (jiffies) of a close event become nanoseconds. Pure: `(monotonic ns, jiffies_64)`
//! pairs of one instant in, a rate out.
//!
//! Two ways, the first that answers wins:
//! - **one sample**: `jiffies_64` starts at `INITIAL_JIFFIES` = 2^32 − 300·HZ (the kernel makes
//!   the 32-bit counter wrap five minutes after boot) and counts HZ per second of
//!   CLOCK_MONOTONIC, which starts at boot too. Of the rates x86 and arm64 kernels are built
//!   with (100, 250, 300, 1000), the one
//!   that predicts the sample within a second, when no other comes within five, is it.
//!   Near 300 s of uptime every rate predicts about 2^32, and this cannot tell;
//! - **two samples** at least a second apart: the rate is the ticks between them per second,
//!   taken when it is within 3 % of a rate some architecture uses.

/// The rates Linux kernels are built with (`CONFIG_HZ_*` choices across architectures).
pub const RATES: [u32; 12] = [100, 250, 300, 1000, 24, 32, 48, 64, 128, 256, 512, 1024];
/// The choices of x86 and arm64 kernels: the only ones one sample tells apart (250 and 256
/// predict within two seconds of each other for minutes after boot).
pub const COMMON_RATES: [u32; 4] = [100, 250, 300, 1000];

/// `INITIAL_JIFFIES` of a kernel built with `hz` (64-bit `unsigned long`).
fn initial_jiffies(hz: u32) -> u64 {
    u64::from((300u32.wrapping_mul(hz)).wrapping_neg())
}

/// The rate one sample implies, if exactly one rate fits it.
pub fn from_sample(mono_ns: u64, jiffies: u64) -> Option<u32> {
    let secs = mono_ns as f64 / 1e9;
    let mut errs: Vec<(f64, u32)> = COMMON_RATES
        .iter()
        .map(|&hz| {
            let predicted = initial_jiffies(hz) as f64 + secs * f64::from(hz);
            ((jiffies as f64 - predicted).abs() / f64::from(hz), hz)
        })
        .collect();
    errs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (best, hz) = errs[0];
    (best < 1.0 && errs[1].0 > 5.0).then_some(hz)
}

/// Learns the rate from samples, once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HzEstimator {
    hz: Option<u32>,
    first: Option<(u64, u64)>,
}

impl HzEstimator {
    /// A rate known beforehand (tests, a recording).
    pub fn known(hz: u32) -> Self {
        HzEstimator {
            hz: Some(hz),
            first: None,
        }
    }

    pub fn hz(&self) -> Option<u32> {
        self.hz
    }

    /// One `(monotonic ns, jiffies_64)` pair; returns the rate once it is known.
    pub fn observe(&mut self, mono_ns: u64, jiffies: u64) -> Option<u32> {
        if self.hz.is_some() {
            return self.hz;
        }
        if let Some(hz) = from_sample(mono_ns, jiffies) {
            self.hz = Some(hz);
            return self.hz;
        }
        match self.first {
            None => self.first = Some((mono_ns, jiffies)),
            Some((t0, j0)) if mono_ns >= t0 + 1_000_000_000 => {
                let rate = jiffies.wrapping_sub(j0) as f64 / ((mono_ns - t0) as f64 / 1e9);
                self.hz = RATES
                    .iter()
                    .copied()
                    .find(|&hz| (rate - f64::from(hz)).abs() <= 0.03 * f64::from(hz));
                if self.hz.is_none() {
                    // Not a known rate: start over from this sample.
                    self.first = Some((mono_ns, jiffies));
                }
            }
            Some(_) => {}
        }
        self.hz
    }

    /// Ticks as nanoseconds at the known rate.
    pub fn ticks_ns(&self, ticks: u32) -> Option<u64> {
        self.hz
            .map(|hz| u64::from(ticks) * 1_000_000_000 / u64::from(hz))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample read off this host (`/proc/timer_list`: "now at 234549986176 nsecs",
    /// "jiffies: 4294950871"), a 250 Hz kernel.
    #[test]
    fn one_sample_names_the_rate() {
        assert_eq!(from_sample(234_549_986_176, 4_294_950_871), Some(250));
        for hz in COMMON_RATES {
            for secs in [20u64, 1_000, 86_400 * 30] {
                let j = initial_jiffies(hz) + secs * u64::from(hz) - 3;
                assert_eq!(
                    from_sample(secs * 1_000_000_000, j),
                    Some(hz),
                    "{hz} Hz at {secs} s"
                );
            }
        }
    }

    #[test]
    fn near_five_minutes_two_samples_are_needed() {
        let hz = 300u64;
        let at = |secs: f64| {
            (
                (secs * 1e9) as u64,
                initial_jiffies(300).wrapping_add((secs * hz as f64) as u64),
            )
        };
        let (t0, j0) = at(300.2);
        assert_eq!(from_sample(t0, j0), None);
        let mut e = HzEstimator::default();
        assert_eq!(e.observe(t0, j0), None);
        let (t1, j1) = at(300.7);
        assert_eq!(e.observe(t1, j1), None, "half a second is too short");
        let (t2, j2) = at(301.5);
        assert_eq!(e.observe(t2, j2), Some(300));
        assert_eq!(e.ticks_ns(600), Some(2_000_000_000));
    }

    #[test]
    fn an_unknown_rate_is_not_guessed() {
        let mut e = HzEstimator::default();
        // 700 ticks per second near 300 s: no kernel rate.
        assert_eq!(e.observe(300_000_000_000, 1 << 32), None);
        assert_eq!(e.observe(302_000_000_000, (1 << 32) + 1400), None);
        assert_eq!(e.ticks_ns(1), None);
    }
}
