//! The gamma distribution: a method-of-moments fit and its CDF (the regularised lower
//! incomplete gamma function, by its series or its continued fraction, whichever converges).

/// A gamma distribution with `shape` k and `scale` theta (location 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gamma {
    pub shape: f64,
    pub scale: f64,
}

impl Gamma {
    /// The method-of-moments fit (k = mean^2 / variance, theta = variance / mean) of positive
    /// `values`; `None` when they are not all positive or do not vary.
    ///
    /// ```
    /// use transferlab::stats::Gamma;
    /// let g = Gamma::fit_moments(&[1.0, 2.0, 3.0]).unwrap();
    /// assert!((g.shape - 6.0).abs() < 1e-12 && (g.scale - 1.0 / 3.0).abs() < 1e-12);
    /// assert!(Gamma::fit_moments(&[1.0, -1.0]).is_none());
    /// ```
    pub fn fit_moments(values: &[f64]) -> Option<Self> {
        if values.len() < 2 || values.iter().any(|&v| !(v.is_finite() && v > 0.0)) {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        (var > 0.0).then(|| Self { shape: mean * mean / var, scale: var / mean })
    }

    /// P(X <= x).
    ///
    /// ```
    /// use transferlab::stats::Gamma;
    /// // Shape 1 is the exponential distribution: 1 - e^(-x / theta).
    /// let e = Gamma { shape: 1.0, scale: 2.0 };
    /// assert!((e.cdf(3.0) - (1.0 - (-1.5f64).exp())).abs() < 1e-12);
    /// // Shape 3, scale 1 at 5: the Erlang CDF 1 - e^-5 (1 + 5 + 12.5).
    /// let g = Gamma { shape: 3.0, scale: 1.0 };
    /// assert!((g.cdf(5.0) - (1.0 - (-5.0f64).exp() * 18.5)).abs() < 1e-12);
    /// ```
    pub fn cdf(&self, x: f64) -> f64 {
        if x <= 0.0 {
            return 0.0;
        }
        regularised_lower(self.shape, x / self.scale)
    }
}

/// P(a, x) = gamma(a, x) / Gamma(a).
fn regularised_lower(a: f64, x: f64) -> f64 {
    let log_prefactor = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        // Series: sum x^n / (a (a+1) ... (a+n)).
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        (sum * log_prefactor.exp()).min(1.0)
    } else {
        // Continued fraction for the upper tail Q, by the modified Lentz method.
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (1.0 - log_prefactor.exp() * h).max(0.0)
    }
}

/// ln Gamma(z) for z > 0 (Lanczos approximation, g = 7, 9 terms: ~15 significant digits).
fn ln_gamma(z: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if z < 0.5 {
        // Reflection: Gamma(z) Gamma(1 - z) = pi / sin(pi z).
        return (std::f64::consts::PI / (std::f64::consts::PI * z).sin()).ln() - ln_gamma(1.0 - z);
    }
    let z = z - 1.0;
    let t = z + G + 0.5;
    let series = C[1..].iter().enumerate().fold(C[0], |s, (i, c)| s + c / (z + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (z + 0.5) * t.ln() - t + series.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_factorials() {
        for (n, fact) in [(1.0, 1.0), (2.0, 1.0), (5.0, 24.0), (11.0, 3_628_800.0f64)] {
            assert!((ln_gamma(n) - fact.ln()).abs() < 1e-12, "ln Gamma({n})");
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn both_branches_agree_with_the_erlang_cdf() {
        // Shape 4 is Erlang: P = 1 - e^-x sum_{n<4} x^n / n!; x = 2 takes the series, x = 9 the fraction.
        for x in [2.0f64, 9.0] {
            let erlang = 1.0 - (-x).exp() * (1.0 + x + x * x / 2.0 + x * x * x / 6.0);
            assert!((regularised_lower(4.0, x) - erlang).abs() < 1e-13, "x = {x}");
        }
    }
}
