//! Image folders in the torchvision `ImageFolder` layout: `root/<class>/<image>`.

use super::codec::{self, Decoded};
use super::dataset::Dataset;
use super::transforms::resize_image;
use crate::error::{Error, Result};
use crate::fsutil;
use rayon::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};

const FORMAT: &str = "image folder";

/// Read `root/<class>/<image>` into a dataset. Classes are the sub-folders of `root` in sorted
/// name order; within a class, images are taken in sorted path order (nested folders are
/// walked). Hidden entries (names starting with `.`) and plain files directly in `root` are
/// skipped; any other file that is not a PNG or JPEG is an error naming it.
///
/// Images stay one channel if every image is grayscale, otherwise all become RGB (alpha is
/// dropped). Without `resize`, all images must have the same size; with `Some((h, w))` each
/// is resized bilinearly.
///
/// ```
/// use transferlab::data::{read_image_folder, write_image_folder, Dataset};
/// # let dir = tempfile::tempdir().unwrap();
/// let ds = Dataset::new(vec![0.0, 1.0, 1.0, 0.0], (1, 2, 1), vec![1, 0], vec!["cat".into(), "dog".into()])?;
/// write_image_folder(&ds, dir.path())?;
/// let back = read_image_folder(dir.path(), None)?;
/// assert_eq!(back.class_names, vec!["cat", "dog"]);
/// assert_eq!(back.labels, vec![0, 1]);
/// # Ok::<(), transferlab::Error>(())
/// ```
pub fn read_image_folder(root: impl AsRef<Path>, resize: Option<(usize, usize)>) -> Result<Dataset> {
    let root = root.as_ref();
    if let Some((h, w)) = resize {
        if h == 0 || w == 0 {
            return Err(Error::invalid("resize target", format!("{h}x{w} has a zero side")));
        }
    }
    let mut class_names = Vec::new();
    let mut files: Vec<(PathBuf, u32)> = Vec::new();
    for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let label = class_names.len() as u32;
        class_names.push(file_name(&dir));
        let mut found = Vec::new();
        walk_files(&dir, &mut found)?;
        found.sort();
        files.extend(found.into_iter().map(|f| (f, label)));
    }
    if class_names.is_empty() {
        return Err(Error::format(root, FORMAT, "no class sub-folders found; expected root/<class>/<image>.png"));
    }
    if files.is_empty() {
        return Err(Error::format(root, FORMAT, "the class folders contain no images"));
    }
    // Decode in parallel, then report the first failure in file order so errors are stable.
    let decoded: Vec<Result<Decoded>> = files
        .par_iter()
        .map(|(path, _)| {
            let bytes = fsutil::read(path)?;
            let d = codec::decode_image(&bytes, path, FORMAT)?;
            Ok(match resize {
                Some(size) => resized(d, size),
                None => d,
            })
        })
        .collect();
    let decoded = decoded.into_iter().collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
    let (pixels, shape) = codec::stack(decoded, &names, root, FORMAT)?;
    let labels = files.iter().map(|&(_, y)| y).collect();
    Dataset::new(pixels, shape, labels, class_names)
}

/// Write a dataset as `root/<class name>/<index>.png` (8-bit PNG, 1 or 3 channels), one
/// folder per class including empty ones, so that [`read_image_folder`] reads it back with
/// the same classes. Indices are zero-padded so sorted order is sample order.
pub fn write_image_folder(ds: &Dataset, root: impl AsRef<Path>) -> Result<()> {
    let root = root.as_ref();
    for name in &ds.class_names {
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
            return Err(Error::invalid(
                "class name",
                format!("{name:?} cannot be a folder name (empty, hidden, or contains a path separator)"),
            ));
        }
    }
    let mut sorted = ds.class_names.clone();
    sorted.sort();
    if sorted != ds.class_names {
        return Err(Error::invalid(
            "class names",
            "an image folder orders classes by name, so the names must already be sorted and unique for labels to survive",
        ));
    }
    if sorted.windows(2).any(|p| p[0] == p[1]) {
        return Err(Error::invalid("class names", "class names must be unique to be folder names"));
    }
    for name in &ds.class_names {
        let dir = root.join(name);
        fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    }
    let width = ds.len().max(1).to_string().len();
    (0..ds.len()).into_par_iter().try_for_each(|i| {
        let png = codec::encode_png(ds.image(i), ds.shape)?;
        let path = root.join(&ds.class_names[ds.labels[i] as usize]).join(format!("{i:0width$}.png"));
        fsutil::write_bytes_atomic(&path, &png)
    })
}

fn resized(d: Decoded, size: (usize, usize)) -> Decoded {
    if (d.height, d.width) == size {
        return d;
    }
    let mut pixels = vec![0f32; d.channels * size.0 * size.1];
    resize_image(&d.pixels, (d.channels, d.height, d.width), size, &mut pixels);
    Decoded { channels: d.channels, height: size.0, width: size.1, pixels }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Non-hidden entries of `dir`, sorted by path.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = fs::read_dir(dir).map_err(|e| Error::io("list directory", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list directory", dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            walk_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}
