//! The gamma distribution: method-of-moments fits (two parameters, or three with a location)
//! and its CDF (the regularised lower incomplete gamma function, by its series or its
//! continued fraction, whichever converges); the normal CDF through the same function.

/// A gamma distribution with `shape` k, `scale` theta and `location` (support: x > location).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gamma {
    pub shape: f64,
    pub scale: f64,
    pub location: f64,
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
        let (mean, var) = mean_and_variance(values);
        (var > 0.0).then(|| Self { shape: mean * mean / var, scale: var / mean, location: 0.0 })
    }

    /// The three-parameter method-of-moments fit, for values of any sign: a gamma's skewness
    /// is 2 / sqrt(k), so k = 4 / skewness^2, theta = sd * skewness / 2 and the location
    /// mean - k theta. `None` when the values are not right-skewed (skewness <= 0: no gamma
    /// has that shape; its limit as the skewness falls to 0 is the normal) or do not vary.
    ///
    /// ```
    /// use transferlab::stats::Gamma;
    /// // Exponential(1) shifted to start at -2: mean -1, sd 1, skewness 2.
    /// let x: Vec<f64> = (0..20_000).map(|i| -2.0 - (1.0 - (i as f64 + 0.5) / 20_000.0).ln()).collect();
    /// let g = Gamma::fit_moments_shifted(&x).unwrap();
    /// assert!((g.shape - 1.0).abs() < 0.1 && (g.scale - 1.0).abs() < 0.1 && (g.location + 2.0).abs() < 0.1, "{g:?}");
    /// assert!(Gamma::fit_moments_shifted(&[1.0, 2.0, 3.0]).is_none()); // symmetric
    /// ```
    pub fn fit_moments_shifted(values: &[f64]) -> Option<Self> {
        if values.len() < 3 || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let (mean, var) = mean_and_variance(values);
        if var <= 0.0 {
            return None;
        }
        let sd = var.sqrt();
        let skewness = values.iter().map(|v| ((v - mean) / sd).powi(3)).sum::<f64>() / values.len() as f64;
        if skewness <= 0.0 {
            return None;
        }
        let shape = 4.0 / (skewness * skewness);
        let scale = sd * skewness / 2.0;
        Some(Self { shape, scale, location: mean - shape * scale })
    }

    /// P(X <= x).
    ///
    /// ```
    /// use transferlab::stats::Gamma;
    /// // Shape 1 is the exponential distribution: 1 - e^(-x / theta).
    /// let e = Gamma { shape: 1.0, scale: 2.0, location: 0.0 };
    /// assert!((e.cdf(3.0) - (1.0 - (-1.5f64).exp())).abs() < 1e-12);
    /// // Shape 3, scale 1 at 5: the Erlang CDF 1 - e^-5 (1 + 5 + 12.5).
    /// let g = Gamma { shape: 3.0, scale: 1.0, location: 0.0 };
    /// assert!((g.cdf(5.0) - (1.0 - (-5.0f64).exp() * 18.5)).abs() < 1e-12);
    /// assert_eq!(Gamma { location: 1.0, ..g }.cdf(6.0), g.cdf(5.0));
    /// ```
    pub fn cdf(&self, x: f64) -> f64 {
        if x <= self.location {
            return 0.0;
        }
        regularised_lower(self.shape, (x - self.location) / self.scale)
    }
}

/// The mean and the population variance (divided by n) of `values`; both NaN when empty.
pub fn mean_and_variance(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (mean, values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n)
}

/// P(X <= x) for the normal distribution of `mean` and standard deviation `sd` (> 0), through
/// erf(z) = P(1/2, z^2).
///
/// ```
/// use transferlab::stats::normal_cdf;
/// assert!((normal_cdf(0.0, 0.0, 1.0) - 0.5).abs() < 1e-15);
/// assert!((normal_cdf(1.96, 0.0, 1.0) - 0.9750021048517795).abs() < 1e-12);
/// assert!((normal_cdf(-1.0, 2.0, 3.0) - 0.15865525393145707).abs() < 1e-12);
/// ```
pub fn normal_cdf(x: f64, mean: f64, sd: f64) -> f64 {
    let z = (x - mean) / (sd * std::f64::consts::SQRT_2);
    let erf = if z == 0.0 { 0.0 } else { regularised_lower(0.5, z * z) };
    if z >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
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
