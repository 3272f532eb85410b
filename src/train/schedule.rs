//! Learning-rate schedules, as functions of fractional epochs.
//!
//! A schedule maps training progress in epochs (step / steps_per_epoch, so 2.5 is half-way
//! through the third epoch) to a learning rate; milestones and warm-up are given in epochs too.

use std::fmt;
use std::sync::Arc;

/// A learning-rate schedule.
///
/// ```
/// use transferlab::train::LrSchedule;
/// let s = LrSchedule::Step { lr: 0.1, milestones: vec![10.0, 20.0], gamma: 0.1 };
/// assert_eq!(s.lr_at(5.0), 0.1);
/// assert!((s.lr_at(15.0) - 0.01).abs() < 1e-12);
/// let w = LrSchedule::warmup(1.0, LrSchedule::Constant { lr: 0.2 });
/// assert!((w.lr_at(0.5) - 0.1).abs() < 1e-12);
/// ```
#[derive(Clone)]
pub enum LrSchedule {
    /// The same rate throughout.
    Constant { lr: f64 },
    /// `lr`, multiplied by `gamma` at each milestone (in epochs).
    Step { lr: f64, milestones: Vec<f64>, gamma: f64 },
    /// Cosine annealing from `lr` to `min_lr` over `epochs`.
    Cosine { lr: f64, min_lr: f64, epochs: f64 },
    /// Linear warm-up from 0 over `epochs`, then `then` (whose clock starts at 0 too).
    Warmup { epochs: f64, then: Box<LrSchedule> },
    /// Triangular cycles base -> max -> base, each `cycle_epochs` long (Smith 2017).
    Triangular { base: f64, max: f64, cycle_epochs: f64 },
    /// One-cycle (Smith & Topin): from max/div_factor up to max over `pct_start` of the run,
    /// then cosine down to max/(div_factor*final_div_factor). PyTorch's defaults are
    /// pct_start 0.3, div_factor 25, final_div_factor 1e4.
    OneCycle { max: f64, epochs: f64, pct_start: f64, div_factor: f64, final_div_factor: f64 },
    /// Straight lines between (epoch, lr) points; constant before the first and after the last.
    Piecewise { points: Vec<(f64, f64)> },
    /// Any function of fractional epochs.
    Custom(Arc<dyn Fn(f64) -> f64 + Send + Sync>),
}

impl fmt::Debug for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LrSchedule::Constant { lr } => write!(f, "Constant({lr})"),
            LrSchedule::Step { lr, milestones, gamma } => write!(f, "Step({lr}, {milestones:?}, x{gamma})"),
            LrSchedule::Cosine { lr, min_lr, epochs } => write!(f, "Cosine({lr} -> {min_lr} over {epochs})"),
            LrSchedule::Warmup { epochs, then } => write!(f, "Warmup({epochs}, {then:?})"),
            LrSchedule::Triangular { base, max, cycle_epochs } => write!(f, "Triangular({base}..{max}, {cycle_epochs})"),
            LrSchedule::OneCycle { max, epochs, .. } => write!(f, "OneCycle({max}, {epochs})"),
            LrSchedule::Piecewise { points } => write!(f, "Piecewise({points:?})"),
            LrSchedule::Custom(_) => write!(f, "Custom(fn)"),
        }
    }
}

impl LrSchedule {
    /// Linear warm-up over `epochs` before `then`.
    pub fn warmup(epochs: f64, then: LrSchedule) -> Self {
        LrSchedule::Warmup { epochs, then: Box::new(then) }
    }

    /// PyTorch's OneCycleLR defaults for a run of `epochs` peaking at `max`.
    pub fn one_cycle(max: f64, epochs: f64) -> Self {
        LrSchedule::OneCycle { max, epochs, pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 }
    }

    /// Two phases of triangular cycles (super-fine-tuning, Sha et al. 2022): over the first
    /// half of `epochs`, cycles base -> `max1` -> base; over the second half, base -> `max2` ->
    /// base (`max2 < max1`), each cycle `cycle_epochs` long. A phase shorter than a cycle is
    /// one compressed cycle. Built as a [`LrSchedule::Piecewise`] so it prints and
    /// fingerprints like any other schedule.
    ///
    /// ```
    /// use transferlab::train::LrSchedule;
    /// let s = LrSchedule::two_phase_cyclic(1e-4, 0.1, 0.01, 2.0, 8.0);
    /// assert!((s.lr_at(1.0) - 0.1).abs() < 1e-12);   // peak of the first phase's first cycle
    /// assert!((s.lr_at(4.0) - 1e-4).abs() < 1e-12);  // the phases meet at the base rate
    /// assert!((s.lr_at(5.0) - 0.01).abs() < 1e-12);  // peak of the second phase's first cycle
    /// ```
    pub fn two_phase_cyclic(base: f64, max1: f64, max2: f64, cycle_epochs: f64, epochs: f64) -> Self {
        let half = epochs / 2.0;
        let mut points = vec![(0.0, base)];
        for (start, peak) in [(0.0, max1), (half, max2)] {
            let cycles = (half / cycle_epochs).round().max(1.0) as usize;
            let len = half / cycles as f64;
            for c in 0..cycles {
                let t0 = start + c as f64 * len;
                points.push((t0 + len / 2.0, peak));
                points.push((t0 + len, base));
            }
        }
        LrSchedule::Piecewise { points }
    }

    /// The learning rate after `epoch` epochs of training (fractional).
    pub fn lr_at(&self, epoch: f64) -> f64 {
        match self {
            LrSchedule::Constant { lr } => *lr,
            LrSchedule::Step { lr, milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| epoch >= m).count();
                lr * gamma.powi(passed as i32)
            }
            LrSchedule::Cosine { lr, min_lr, epochs } => {
                let t = (epoch / epochs).clamp(0.0, 1.0);
                min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
            }
            LrSchedule::Warmup { epochs, then } => {
                if epoch < *epochs {
                    then.lr_at(0.0) * epoch / epochs
                } else {
                    then.lr_at(epoch - epochs)
                }
            }
            LrSchedule::Triangular { base, max, cycle_epochs } => {
                let pos = (epoch / cycle_epochs).fract();
                let up = if pos < 0.5 { pos * 2.0 } else { (1.0 - pos) * 2.0 };
                base + (max - base) * up
            }
            LrSchedule::OneCycle { max, epochs, pct_start, div_factor, final_div_factor } => {
                let start = max / div_factor;
                let end = start / final_div_factor;
                let t = (epoch / epochs).clamp(0.0, 1.0);
                let cos = |a: f64, b: f64, p: f64| b + 0.5 * (a - b) * (1.0 + (std::f64::consts::PI * p).cos());
                if t < *pct_start {
                    cos(start, *max, t / pct_start)
                } else {
                    cos(*max, end, (t - pct_start) / (1.0 - pct_start))
                }
            }
            LrSchedule::Piecewise { points } => piecewise(points, epoch),
            LrSchedule::Custom(f) => f(epoch),
        }
    }
}

fn piecewise(points: &[(f64, f64)], x: f64) -> f64 {
    match points {
        [] => 0.0,
        [(_, y)] => *y,
        _ => {
            if x <= points[0].0 {
                return points[0].1;
            }
            for w in points.windows(2) {
                let ((x0, y0), (x1, y1)) = (w[0], w[1]);
                if x <= x1 {
                    return if x1 > x0 { y0 + (y1 - y0) * (x - x0) / (x1 - x0) } else { y1 };
                }
            }
            points[points.len() - 1].1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_schedules() {
        let c = LrSchedule::Cosine { lr: 1.0, min_lr: 0.0, epochs: 10.0 };
        assert_eq!(c.lr_at(0.0), 1.0);
        assert!((c.lr_at(5.0) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(10.0).abs() < 1e-12);
        let t = LrSchedule::Triangular { base: 0.1, max: 1.0, cycle_epochs: 2.0 };
        assert!((t.lr_at(1.0) - 1.0).abs() < 1e-12);
        assert!((t.lr_at(2.0) - 0.1).abs() < 1e-12);
        let o = LrSchedule::one_cycle(1.0, 10.0);
        assert!((o.lr_at(0.0) - 0.04).abs() < 1e-12);
        assert!((o.lr_at(3.0) - 1.0).abs() < 1e-12);
        assert!(o.lr_at(10.0) < 1e-5);
        let p = LrSchedule::Piecewise { points: vec![(0.0, 0.0), (1.0, 1.0), (3.0, 0.0)] };
        assert!((p.lr_at(2.0) - 0.5).abs() < 1e-12);
        assert_eq!(p.lr_at(9.0), 0.0);
    }
}
