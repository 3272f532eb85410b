//! CIFAR-10 and CIFAR-100 binary batches (the `*-binary.tar.gz` releases).
//!
//! A CIFAR-10 record is one label byte then 3,072 pixel bytes (1,024 red, 1,024 green, 1,024
//! blue, each 32x32 row-major), which is already CHW. A CIFAR-100 record has a coarse label
//! byte and a fine label byte before the same pixels.

use super::codec;
use super::dataset::Dataset;
use crate::error::{Error, Result};
use crate::fsutil;
use std::path::Path;

const PIXELS: usize = 3 * 32 * 32;
const SHAPE: (usize, usize, usize) = (3, 32, 32);

/// The ten CIFAR-10 class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// The hundred CIFAR-100 fine class names, in label order (as in the dataset's `meta` file).
pub const CIFAR100_FINE_CLASSES: [&str; 100] = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
];

/// The twenty CIFAR-100 coarse (superclass) names, in label order.
pub const CIFAR100_COARSE_CLASSES: [&str; 20] = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
];

/// Read CIFAR-10 binary batches (e.g. `data_batch_1.bin` .. `data_batch_5.bin`), concatenated
/// in the order given. Images are `(3, 32, 32)` in [0, 1].
///
/// ```
/// use transferlab::data::{read_cifar10, write_cifar10, Dataset};
/// # let dir = tempfile::tempdir().unwrap();
/// let names = transferlab::data::CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
/// let ds = Dataset::new(vec![0.0; 3 * 32 * 32], (3, 32, 32), vec![9], names)?;
/// let path = dir.path().join("test_batch.bin");
/// write_cifar10(&ds, &path)?;
/// let back = read_cifar10(&[&path])?;
/// assert_eq!(back.class_names[back.labels[0] as usize], "truck");
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn read_cifar10<P: AsRef<Path>>(paths: &[P]) -> Result<Dataset> {
    let (pixels, labels, _) = read_records(paths, Variant::Ten)?;
    Dataset::new(pixels, SHAPE, labels, names(&CIFAR10_CLASSES))
}

/// Read CIFAR-100 binary batches (`train.bin`, `test.bin`). With `fine` the labels are the 100
/// fine classes, otherwise the 20 coarse superclasses; either way `attributes.group` holds the
/// other granularity's label of each image (the coarse label when `fine`, and vice versa).
///
/// ```
/// use transferlab::data::{read_cifar100, write_cifar100, Dataset};
/// # let dir = tempfile::tempdir().unwrap();
/// let mut ds = Dataset::new(vec![0.5; 3 * 32 * 32], (3, 32, 32), vec![49], Dataset::numbered_classes(100))?;
/// ds.attributes.group = Some(vec![10]); // coarse label of "mountain"
/// let path = dir.path().join("test.bin");
/// write_cifar100(&ds, &path, true)?;
/// let coarse = read_cifar100(&[&path], false)?;
/// assert_eq!(coarse.class_names[coarse.labels[0] as usize], "large_natural_outdoor_scenes");
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn read_cifar100<P: AsRef<Path>>(paths: &[P], fine: bool) -> Result<Dataset> {
    let (pixels, fine_labels, coarse_labels) = read_records(paths, Variant::Hundred)?;
    let (labels, other, class_names) = if fine {
        (fine_labels, coarse_labels, names(&CIFAR100_FINE_CLASSES))
    } else {
        (coarse_labels, fine_labels, names(&CIFAR100_COARSE_CLASSES))
    };
    let mut ds = Dataset::new(pixels, SHAPE, labels, class_names)?;
    ds.attributes.group = Some(other);
    Ok(ds)
}

/// Write a `(3, 32, 32)` dataset with at most 10 classes as one CIFAR-10 binary batch
/// (atomically). Pixels are rounded to bytes.
pub fn write_cifar10(ds: &Dataset, path: impl AsRef<Path>) -> Result<()> {
    check_shape(ds)?;
    check_range(&ds.labels, 10, "CIFAR-10 label")?;
    let mut out = Vec::with_capacity(ds.len() * (PIXELS + 1));
    for i in 0..ds.len() {
        out.push(ds.labels[i] as u8);
        out.extend(ds.image(i).iter().map(|&x| codec::unit_to_byte(x)));
    }
    fsutil::write_bytes_atomic(path.as_ref(), &out)
}

/// Write a `(3, 32, 32)` dataset as one CIFAR-100 binary batch (atomically). `ds.labels` are
/// the fine labels if `fine` (else the coarse ones) and `attributes.group` must hold the other
/// granularity, as [`read_cifar100`] produces.
pub fn write_cifar100(ds: &Dataset, path: impl AsRef<Path>, fine: bool) -> Result<()> {
    check_shape(ds)?;
    let other = ds.attributes.group.as_ref().ok_or_else(|| {
        Error::invalid(
            "CIFAR-100 export",
            "attributes.group must hold the other label granularity (coarse when labels are fine)",
        )
    })?;
    let (fine_labels, coarse_labels) = if fine { (&ds.labels, other) } else { (other, &ds.labels) };
    check_range(fine_labels, 100, "CIFAR-100 fine label")?;
    check_range(coarse_labels, 20, "CIFAR-100 coarse label")?;
    let mut out = Vec::with_capacity(ds.len() * (PIXELS + 2));
    for i in 0..ds.len() {
        out.push(coarse_labels[i] as u8);
        out.push(fine_labels[i] as u8);
        out.extend(ds.image(i).iter().map(|&x| codec::unit_to_byte(x)));
    }
    fsutil::write_bytes_atomic(path.as_ref(), &out)
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Ten,
    Hundred,
}

impl Variant {
    fn format(self) -> &'static str {
        match self {
            Variant::Ten => "CIFAR-10 binary",
            Variant::Hundred => "CIFAR-100 binary",
        }
    }
    fn label_bytes(self) -> usize {
        match self {
            Variant::Ten => 1,
            Variant::Hundred => 2,
        }
    }
}

/// Pixels, primary labels (CIFAR-10 label or CIFAR-100 fine) and CIFAR-100 coarse labels.
fn read_records<P: AsRef<Path>>(paths: &[P], v: Variant) -> Result<(Vec<f32>, Vec<u32>, Vec<u32>)> {
    if paths.is_empty() {
        return Err(Error::invalid("CIFAR paths", "no batch files given"));
    }
    let record = PIXELS + v.label_bytes();
    let mut pixels = Vec::new();
    let (mut primary, mut coarse) = (Vec::new(), Vec::new());
    for path in paths {
        let path = path.as_ref();
        let bytes = fsutil::read(path)?;
        let err = |reason: String| Error::format(path, v.format(), reason);
        if bytes.is_empty() {
            return Err(err("the file is empty".into()));
        }
        if bytes.len() % record != 0 {
            let other = match v {
                Variant::Ten => "a CIFAR-100 batch has 3,074-byte records: use read_cifar100",
                Variant::Hundred => "a CIFAR-10 batch has 3,073-byte records: use read_cifar10",
            };
            return Err(err(format!(
                "its size {} bytes is not a multiple of the {record}-byte record ({} whole records and {} bytes left over): \
                 the file is truncated or of another format ({other}); the Python-pickle release is not supported",
                bytes.len(),
                bytes.len() / record,
                bytes.len() % record
            )));
        }
        pixels.reserve(bytes.len() / record * PIXELS);
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            let (labels, px) = rec.split_at(v.label_bytes());
            match v {
                Variant::Ten => {
                    if labels[0] >= 10 {
                        return Err(err(format!(
                            "record {i} has label {}, but CIFAR-10 labels are 0..9 (is this a CIFAR-100 file?)",
                            labels[0]
                        )));
                    }
                    primary.push(labels[0] as u32);
                }
                Variant::Hundred => {
                    if labels[0] >= 20 {
                        return Err(err(format!("record {i} has coarse label {}, but CIFAR-100 coarse labels are 0..19", labels[0])));
                    }
                    if labels[1] >= 100 {
                        return Err(err(format!("record {i} has fine label {}, but CIFAR-100 fine labels are 0..99", labels[1])));
                    }
                    coarse.push(labels[0] as u32);
                    primary.push(labels[1] as u32);
                }
            }
            pixels.extend(codec::bytes_to_unit(px));
        }
    }
    Ok((pixels, primary, coarse))
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn check_shape(ds: &Dataset) -> Result<()> {
    if ds.shape != SHAPE {
        return Err(Error::invalid(
            "CIFAR export",
            format!("CIFAR records hold (3, 32, 32) images, these are {:?}; resize or convert first", ds.shape),
        ));
    }
    Ok(())
}

fn check_range(labels: &[u32], n: u32, what: &'static str) -> Result<()> {
    match labels.iter().enumerate().find(|(_, &y)| y >= n) {
        Some((i, &y)) => Err(Error::invalid(what, format!("sample {i} has label {y}, must be below {n}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_lists_are_complete_and_unique() {
        let mut fine = CIFAR100_FINE_CLASSES.to_vec();
        fine.sort();
        fine.dedup();
        assert_eq!(fine.len(), 100);
        assert_eq!(CIFAR100_FINE_CLASSES[49], "mountain");
        assert_eq!(CIFAR100_FINE_CLASSES[0], "apple");
        assert_eq!(CIFAR100_FINE_CLASSES[99], "worm");
    }
}
