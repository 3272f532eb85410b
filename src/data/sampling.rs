//! Subsets and samplers: seeded splits, class subsets, per-class samples, shuffles and
//! mini-batch index iterators. Every random choice comes from a named [`crate::rng`] stream,
//! so the same seed (and epoch) always gives the same samples.

use super::dataset::Dataset;
use crate::error::{Error, Result};
use crate::rng::{self, permutation};

/// How many samples [`Dataset::split`] takes: a fraction of the dataset or a count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SplitSize {
    /// A fraction in [0, 1] of the samples (rounded to the nearest count).
    Fraction(f64),
    /// An exact number of samples.
    Count(usize),
}

impl From<f64> for SplitSize {
    fn from(f: f64) -> Self {
        SplitSize::Fraction(f)
    }
}

impl From<usize> for SplitSize {
    fn from(n: usize) -> Self {
        SplitSize::Count(n)
    }
}

impl Dataset {
    /// Split off `size` samples chosen at random: returns `(part, rest)` where `part` has the
    /// requested size. With `stratify`, each class contributes in proportion to its size
    /// (largest remainders get the rounding), so class balance is kept. Both parts keep the
    /// original sample order and record `source_index`.
    ///
    /// ```
    /// let ds = transferlab::data::digits()?;
    /// let (val, train) = ds.split(0.1, 7, true)?;
    /// assert_eq!(val.len(), 180);
    /// assert_eq!(val.len() + train.len(), ds.len());
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn split(&self, size: impl Into<SplitSize>, seed: u64, stratify: bool) -> Result<(Dataset, Dataset)> {
        let n = self.len();
        let k = match size.into() {
            SplitSize::Fraction(f) if (0.0..=1.0).contains(&f) => (f * n as f64).round() as usize,
            SplitSize::Fraction(f) => {
                return Err(Error::invalid("split fraction", format!("{f} is outside [0, 1]")))
            }
            SplitSize::Count(c) if c <= n => c,
            SplitSize::Count(c) => {
                return Err(Error::invalid("split size", format!("{c} samples requested from a dataset of {n}")))
            }
        };
        let mut rng = rng::stream(seed, "data/split");
        let mut chosen = vec![false; n];
        if stratify {
            let by_class = self.indices_by_class();
            let quotas = proportional_quotas(&by_class.iter().map(Vec::len).collect::<Vec<_>>(), k);
            for (members, quota) in by_class.iter().zip(quotas) {
                for &j in permutation(&mut rng, members.len()).iter().take(quota) {
                    chosen[members[j]] = true;
                }
            }
        } else {
            for &i in permutation(&mut rng, n).iter().take(k) {
                chosen[i] = true;
            }
        }
        let (part, rest): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| chosen[i]);
        Ok((self.select(&part)?, self.select(&rest)?))
    }

    /// The samples whose label is in `classes`, in dataset order. With `relabel`, labels become
    /// positions in `classes` and class names are reduced to those classes (in that order);
    /// without, labels and class names are unchanged.
    ///
    /// ```
    /// let ds = transferlab::data::digits()?;
    /// let sub = ds.class_subset(&[3, 8], true)?;
    /// assert_eq!(sub.class_names, vec!["3", "8"]);
    /// assert_eq!(sub.class_counts(), vec![183, 174]);
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn class_subset(&self, classes: &[u32], relabel: bool) -> Result<Dataset> {
        let nc = self.num_classes();
        let mut position = vec![None; nc];
        for (p, &c) in classes.iter().enumerate() {
            let slot = position.get_mut(c as usize).ok_or_else(|| {
                Error::invalid("class subset", format!("class {c} is out of range: there are {nc} classes"))
            })?;
            if slot.is_some() {
                return Err(Error::invalid("class subset", format!("class {c} is listed twice")));
            }
            *slot = Some(p as u32);
        }
        let keep: Vec<usize> = (0..self.len()).filter(|&i| position[self.labels[i] as usize].is_some()).collect();
        let mut sub = self.select(&keep)?;
        if relabel {
            for y in &mut sub.labels {
                // Every kept label has a position: `keep` only holds such samples.
                *y = position[*y as usize].unwrap_or(0);
            }
            sub.class_names = classes.iter().map(|&c| self.class_names[c as usize].clone()).collect();
        }
        Ok(sub)
    }

    /// `k` random samples of every class (in dataset order). Errors if a class has fewer.
    ///
    /// ```
    /// let few = transferlab::data::digits()?.per_class_sample(5, 0)?;
    /// assert_eq!(few.class_counts(), vec![5; 10]);
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn per_class_sample(&self, k: usize, seed: u64) -> Result<Dataset> {
        let by_class = self.indices_by_class();
        if let Some((c, members)) = by_class.iter().enumerate().find(|(_, m)| m.len() < k) {
            return Err(Error::invalid(
                "per-class sample",
                format!(
                    "class {c} ({:?}) has {} samples, fewer than the {k} requested",
                    self.class_names[c],
                    members.len()
                ),
            ));
        }
        let mut rng = rng::stream(seed, "data/per_class_sample");
        let mut keep = Vec::with_capacity(k * by_class.len());
        for members in &by_class {
            keep.extend(permutation(&mut rng, members.len()).iter().take(k).map(|&j| members[j]));
        }
        keep.sort_unstable();
        self.select(&keep)
    }

    /// A permutation of `0..len()` that depends only on `(seed, epoch)`.
    pub fn shuffled_indices(&self, seed: u64, epoch: u64) -> Vec<usize> {
        permutation(&mut rng::stream_at(seed, "data/shuffle", epoch), self.len())
    }

    /// Mini-batches of indices of a seeded permutation for `epoch`: see [`Batches`].
    pub fn batches(&self, batch_size: usize, drop_last: bool, seed: u64, epoch: u64) -> Result<Batches> {
        Batches::shuffled(self.len(), batch_size, drop_last, seed, epoch)
    }

    /// Sample indices grouped by label.
    pub fn indices_by_class(&self) -> Vec<Vec<usize>> {
        let mut by_class = vec![Vec::new(); self.num_classes()];
        for (i, &y) in self.labels.iter().enumerate() {
            by_class[y as usize].push(i);
        }
        by_class
    }
}

/// Split `k` over groups of the given sizes in proportion (largest remainder; ties go to the
/// lower group index), never giving a group more than it has.
fn proportional_quotas(sizes: &[usize], k: usize) -> Vec<usize> {
    let n: usize = sizes.iter().sum();
    if n == 0 {
        return vec![0; sizes.len()];
    }
    let exact: Vec<f64> = sizes.iter().map(|&s| s as f64 * k as f64 / n as f64).collect();
    let mut quotas: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    let mut left = k - quotas.iter().sum::<usize>();
    for &g in order.iter().cycle().take(order.len() * 2) {
        if left == 0 {
            break;
        }
        if quotas[g] < sizes[g] {
            quotas[g] += 1;
            left -= 1;
        }
    }
    quotas
}

/// Mini-batches of sample indices, in a seeded random order (training) or in order
/// (evaluation). Reproducible: the same `(n, seed, epoch)` gives the same batches.
///
/// ```
/// use transferlab::data::Batches;
/// let batches: Vec<Vec<usize>> = Batches::shuffled(10, 4, false, 1, 0)?.collect();
/// assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
/// let again: Vec<Vec<usize>> = Batches::shuffled(10, 4, false, 1, 0)?.collect();
/// assert_eq!(batches, again);
/// assert_eq!(Batches::shuffled(10, 4, true, 1, 0)?.len(), 2);
/// # Ok::<(), transferlab::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Batches {
    order: Vec<usize>,
    batch_size: usize,
    end: usize,
    pos: usize,
}

impl Batches {
    /// Batches over a permutation of `0..n` drawn from `(seed, epoch)`, the same permutation
    /// as [`Dataset::shuffled_indices`]. With `drop_last`, a final short batch is skipped.
    pub fn shuffled(n: usize, batch_size: usize, drop_last: bool, seed: u64, epoch: u64) -> Result<Self> {
        let order = permutation(&mut rng::stream_at(seed, "data/shuffle", epoch), n);
        Self::over(order, batch_size, drop_last)
    }

    /// Batches over `0..n` in order, the last one possibly short (for evaluation).
    pub fn sequential(n: usize, batch_size: usize) -> Result<Self> {
        Self::over((0..n).collect(), batch_size, false)
    }

    /// Batches over a given order of indices.
    pub fn over(order: Vec<usize>, batch_size: usize, drop_last: bool) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::invalid("batch size", "must be at least 1"));
        }
        let end = if drop_last { order.len() / batch_size * batch_size } else { order.len() };
        Ok(Self { order, batch_size, end, pos: 0 })
    }
}

impl Iterator for Batches {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        if self.pos >= self.end {
            return None;
        }
        let stop = (self.pos + self.batch_size).min(self.end);
        let batch = self.order[self.pos..stop].to_vec();
        self.pos = stop;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.end - self.pos).div_ceil(self.batch_size);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_sum_and_respect_sizes() {
        assert_eq!(proportional_quotas(&[10, 10, 10], 5), vec![2, 2, 1]);
        assert_eq!(proportional_quotas(&[1, 99], 50), vec![1, 49]);
        assert_eq!(proportional_quotas(&[3, 0, 2], 5), vec![3, 0, 2]);
        assert_eq!(proportional_quotas(&[], 0), Vec::<usize>::new());
    }
}
