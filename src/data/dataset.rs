//! The in-memory dataset every method works on.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// Per-sample attributes beyond the label. Each is either absent or has one entry per sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes {
    /// A group or protected attribute (subgroup id, spurious-feature flag, gender...).
    pub group: Option<Vec<u32>>,
    /// Whether the sample was poisoned (set by the poisoning functions).
    pub poisoned: Option<Vec<bool>>,
    /// The index of the sample in the dataset it was derived from.
    pub source_index: Option<Vec<usize>>,
}

/// Images (NCHW, f32 in [0, 1] unless normalised), integer labels, class names and optional
/// per-sample attributes. Cheap to clone: the pixel buffer is shared until modified.
///
/// ```
/// use transferlab::data::Dataset;
/// let ds = Dataset::new(vec![0.5; 2 * 1 * 2 * 2], (1, 2, 2), vec![0, 1], vec!["a".into(), "b".into()]).unwrap();
/// assert_eq!(ds.len(), 2);
/// assert_eq!(ds.image(1), &[0.5; 4]);
/// ```
#[derive(Debug, Clone)]
pub struct Dataset {
    pixels: Arc<Vec<f32>>,
    /// (channels, height, width) of every image.
    pub shape: (usize, usize, usize),
    /// One label per image, each `< class_names.len()`.
    pub labels: Vec<u32>,
    /// Human-readable class names; their count is the number of classes.
    pub class_names: Vec<String>,
    /// Optional per-sample attributes.
    pub attributes: Attributes,
}

impl Dataset {
    /// Build a dataset, checking that the buffer, labels and class names agree.
    pub fn new(
        pixels: Vec<f32>,
        shape: (usize, usize, usize),
        labels: Vec<u32>,
        class_names: Vec<String>,
    ) -> Result<Self> {
        let (c, h, w) = shape;
        let per = c * h * w;
        if per == 0 {
            return Err(Error::invalid("dataset shape", format!("{shape:?} has a zero dimension")));
        }
        if pixels.len() != per * labels.len() {
            return Err(Error::invalid(
                "dataset",
                format!(
                    "{} pixel values do not make {} images of shape {:?} ({} values expected)",
                    pixels.len(),
                    labels.len(),
                    shape,
                    per * labels.len()
                ),
            ));
        }
        if class_names.is_empty() {
            return Err(Error::invalid("dataset", "at least one class name is required"));
        }
        if let Some((i, &y)) = labels.iter().enumerate().find(|(_, &y)| y as usize >= class_names.len()) {
            return Err(Error::invalid(
                "dataset labels",
                format!(
                    "label {y} of sample {i} is out of range: there are {} classes (0..{})",
                    class_names.len(),
                    class_names.len() - 1
                ),
            ));
        }
        Ok(Self {
            pixels: Arc::new(pixels),
            shape,
            labels,
            class_names,
            attributes: Attributes::default(),
        })
    }

    /// Class names `"0"`, `"1"`, ... for `n` classes.
    pub fn numbered_classes(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset has no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Values per image (C*H*W).
    pub fn image_len(&self) -> usize {
        self.shape.0 * self.shape.1 * self.shape.2
    }

    /// All pixels, image after image, NCHW.
    pub fn pixels(&self) -> &[f32] {
        &self.pixels
    }

    /// Mutable pixels; copies the buffer first if another clone shares it.
    pub fn pixels_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.pixels).as_mut_slice()
    }

    /// The pixels of image `i` (CHW).
    ///
    /// # Panics
    /// When `i` is not below `len()`, as indexing a `Vec` does, with a message naming both;
    /// [`Dataset::try_image`] returns the error instead.
    pub fn image(&self, i: usize) -> &[f32] {
        self.check_index(i).unwrap_or_else(|e| panic!("{e}"));
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The pixels of image `i` (CHW), or an error when there is no image `i`.
    ///
    /// ```
    /// let ds = transferlab::data::digits()?;
    /// assert_eq!(ds.try_image(0)?.len(), 64);
    /// assert!(ds.try_image(ds.len()).unwrap_err().to_string().contains("out of range"));
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn try_image(&self, i: usize) -> Result<&[f32]> {
        self.check_index(i)?;
        let n = self.image_len();
        Ok(&self.pixels[i * n..(i + 1) * n])
    }

    /// Mutable pixels of image `i` (panics like [`Dataset::image`] when there is none).
    pub fn image_mut(&mut self, i: usize) -> &mut [f32] {
        self.check_index(i).unwrap_or_else(|e| panic!("{e}"));
        let n = self.image_len();
        &mut self.pixels_mut()[i * n..(i + 1) * n]
    }

    fn check_index(&self, i: usize) -> Result<()> {
        if i >= self.len() {
            return Err(Error::invalid("sample index", format!("{i} is out of range for a dataset of {} samples (0..{})", self.len(), self.len())));
        }
        Ok(())
    }

    /// Samples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &y in &self.labels {
            counts[y as usize] += 1;
        }
        counts
    }

    /// The poisoned flags, all false if none were recorded.
    pub fn poisoned_flags(&self) -> Vec<bool> {
        self.attributes.poisoned.clone().unwrap_or_else(|| vec![false; self.len()])
    }

    /// A stable 64-bit hash of the image shape, labels and pixel values: resumable logs use it
    /// to tell whether they were computed on the same data.
    ///
    /// ```
    /// use transferlab::data::Dataset;
    /// let a = Dataset::new(vec![0.0, 1.0], (1, 1, 1), vec![0, 1], vec!["a".into(), "b".into()])?;
    /// let b = Dataset::new(vec![0.0, 1.0], (1, 1, 1), vec![1, 0], vec!["a".into(), "b".into()])?;
    /// assert_eq!(a.fingerprint(), a.clone().fingerprint());
    /// assert_ne!(a.fingerprint(), b.fingerprint());
    /// # Ok::<(), transferlab::Error>(())
    /// ```
    pub fn fingerprint(&self) -> u64 {
        let (c, h, w) = self.shape;
        let mut bytes = Vec::with_capacity(24 + 4 * (self.labels.len() + self.pixels.len()));
        for v in [c, h, w] {
            bytes.extend_from_slice(&(v as u64).to_le_bytes());
        }
        self.labels.iter().for_each(|l| bytes.extend_from_slice(&l.to_le_bytes()));
        self.pixels.iter().for_each(|p| bytes.extend_from_slice(&p.to_bits().to_le_bytes()));
        crate::rng::fnv1a(&bytes)
    }

    /// A new dataset holding the samples at `indices` (in that order, repeats allowed).
    /// Attributes are carried; `source_index` records where each sample came from.
    pub fn select(&self, indices: &[usize]) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::invalid(
                "sample index",
                format!("{bad} is out of range for a dataset of {} samples", self.len()),
            ));
        }
        let n = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        let pick = |v: &Vec<u32>| indices.iter().map(|&i| v[i]).collect::<Vec<_>>();
        let source = match &self.attributes.source_index {
            Some(s) => indices.iter().map(|&i| s[i]).collect(),
            None => indices.to_vec(),
        };
        Ok(Self {
            pixels: Arc::new(pixels),
            shape: self.shape,
            labels: pick(&self.labels),
            class_names: self.class_names.clone(),
            attributes: Attributes {
                group: self.attributes.group.as_ref().map(pick),
                poisoned: self
                    .attributes
                    .poisoned
                    .as_ref()
                    .map(|p| indices.iter().map(|&i| p[i]).collect()),
                source_index: Some(source),
            },
        })
    }

    /// Append `other`'s samples (same image shape and classes) after this dataset's.
    pub fn concat(&self, other: &Dataset) -> Result<Self> {
        if self.shape != other.shape {
            return Err(Error::shape(
                "concatenating datasets",
                format!("image shapes {:?} and {:?} differ", self.shape, other.shape),
            ));
        }
        if self.class_names != other.class_names {
            return Err(Error::invalid(
                "concatenation",
                "the datasets have different class names; relabel one first",
            ));
        }
        let mut pixels = Vec::with_capacity(self.pixels.len() + other.pixels.len());
        pixels.extend_from_slice(&self.pixels);
        pixels.extend_from_slice(&other.pixels);
        let mut labels = self.labels.clone();
        labels.extend_from_slice(&other.labels);
        fn join<T: Clone>(a: &Option<Vec<T>>, b: &Option<Vec<T>>, na: usize, nb: usize, fill: impl Fn(usize) -> T) -> Option<Vec<T>> {
            if a.is_none() && b.is_none() {
                return None;
            }
            let mut v: Vec<T> = a.clone().unwrap_or_else(|| (0..na).map(&fill).collect());
            v.extend(b.clone().unwrap_or_else(|| (0..nb).map(&fill).collect()));
            Some(v)
        }
        let (na, nb) = (self.len(), other.len());
        Ok(Self {
            pixels: Arc::new(pixels),
            shape: self.shape,
            labels,
            class_names: self.class_names.clone(),
            attributes: Attributes {
                group: join(&self.attributes.group, &other.attributes.group, na, nb, |_| 0),
                poisoned: join(&self.attributes.poisoned, &other.attributes.poisoned, na, nb, |_| false),
                source_index: join(&self.attributes.source_index, &other.attributes.source_index, na, nb, |i| i),
            },
        })
    }

    /// The images at `indices` as one NCHW tensor on `device`, and their labels as a u32 tensor.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let n = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            pixels.extend_from_slice(self.try_image(i)?);
            labels.push(self.labels[i]);
        }
        let (c, h, w) = self.shape;
        let x = Tensor::from_vec(pixels, (indices.len(), c, h, w), device)?;
        let y = Tensor::from_vec(labels, indices.len(), device)?;
        Ok((x, y))
    }

    /// All images as one NCHW tensor.
    pub fn images_tensor(&self, device: &Device) -> Result<Tensor> {
        let (c, h, w) = self.shape;
        Ok(Tensor::from_slice(&self.pixels, (self.len(), c, h, w), device)?)
    }

    /// Replace the pixels with a buffer of the same length (used by transforms).
    pub fn with_pixels(&self, pixels: Vec<f32>, shape: (usize, usize, usize)) -> Result<Self> {
        if pixels.len() != shape.0 * shape.1 * shape.2 * self.len() {
            return Err(Error::shape(
                "replacing pixels",
                format!("{} values do not make {} images of shape {shape:?}", pixels.len(), self.len()),
            ));
        }
        Ok(Self {
            pixels: Arc::new(pixels),
            shape,
            labels: self.labels.clone(),
            class_names: self.class_names.clone(),
            attributes: self.attributes.clone(),
        })
    }
}
