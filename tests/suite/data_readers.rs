//! Readers, writers, generators, transforms and samplers of `transferlab::data`.
//!
//! Every fixture is generated here, so these tests need nothing outside the repository; the
//! one test that reads the real MNIST test set skips itself when `../shared` is absent.

use rand::Rng;
use std::fs;
use std::path::{Path, PathBuf};
use transferlab::data::*;
use transferlab::rng::{stream, stream_at};
use transferlab::Error;

/// A dataset whose pixels are exact byte values (`k / 255`), so 8-bit formats round-trip
/// bit for bit.
fn byte_dataset(n: usize, shape: (usize, usize, usize), classes: Vec<String>, seed: u64) -> Dataset {
    let mut r = stream(seed, "fixture");
    let per = shape.0 * shape.1 * shape.2;
    let pixels = (0..n * per).map(|_| r.random::<u8>() as f32 / 255.0).collect();
    let labels = (0..n).map(|i| (i % classes.len()) as u32).collect();
    Dataset::new(pixels, shape, labels, classes).unwrap()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The error's message, asserting it is a `Format` error (the readers' contract).
fn format_error<T: std::fmt::Debug>(r: transferlab::Result<T>) -> String {
    match r {
        Err(e @ Error::Format { .. }) => e.to_string(),
        other => panic!("expected a Format error, got {other:?}"),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} does not mention {p:?}");
    }
}

fn truncate(path: &Path, keep: usize) {
    let bytes = fs::read(path).unwrap();
    fs::write(path, &bytes[..keep]).unwrap();
}

// ---------------------------------------------------------------- IDX

fn idx_fixture(dir: &Path, gz: bool) -> (Dataset, PathBuf, PathBuf) {
    let ds = byte_dataset(12, (1, 5, 4), Dataset::numbered_classes(10), 1);
    let ext = if gz { ".gz" } else { "" };
    let (img, lab) = (dir.join(format!("images-idx3-ubyte{ext}")), dir.join(format!("labels-idx1-ubyte{ext}")));
    write_idx_dataset(&ds, &img, &lab).unwrap();
    (ds, img, lab)
}

#[test]
fn idx_round_trip_plain_and_gzip() {
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (ds, img, lab) = idx_fixture(dir.path(), gz);
        assert_eq!(fs::read(&img).unwrap()[..2] == [0x1f, 0x8b], gz);
        let back = read_idx_dataset(&img, &lab).unwrap();
        assert_eq!(back.shape, (1, 5, 4));
        assert_eq!(back.pixels(), ds.pixels());
        assert_eq!(back.labels, ds.labels);
        assert_eq!(back.class_names, Dataset::numbered_classes(10));
    }
}

#[test]
fn idx_more_than_ten_classes() {
    let dir = tempfile::tempdir().unwrap();
    let ds = byte_dataset(30, (1, 2, 2), Dataset::numbered_classes(15), 2);
    let (img, lab) = (dir.path().join("i"), dir.path().join("l"));
    write_idx_dataset(&ds, &img, &lab).unwrap();
    assert_eq!(read_idx_dataset(&img, &lab).unwrap().num_classes(), 15);
}

#[test]
fn idx_truncated_images_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, img, lab) = idx_fixture(dir.path(), false);
    let len = fs::metadata(&img).unwrap().len() as usize;
    truncate(&img, len - 7);
    let msg = format_error(read_idx_dataset(&img, &lab));
    assert_contains(&msg, &["images-idx3-ubyte", "truncated", "240 data bytes", "233"]);
}

#[test]
fn idx_truncated_gzip_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (_, img, lab) = idx_fixture(dir.path(), true);
    let len = fs::metadata(&img).unwrap().len() as usize;
    truncate(&img, len / 2);
    assert_contains(&format_error(read_idx_dataset(&img, &lab)), &["gzip", "truncated"]);
}

#[test]
fn idx_wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    let (_, img, lab) = idx_fixture(dir.path(), false);
    // Swapped arguments: the labels file where images are expected.
    assert_contains(&format_error(read_idx_dataset(&lab, &img)), &["wrong magic number 0x00000801", "swapped"]);
    let mut bytes = fs::read(&img).unwrap();
    bytes[..4].copy_from_slice(&[0x50, 0x4b, 0x03, 0x04]);
    fs::write(&img, bytes).unwrap();
    assert_contains(&format_error(read_idx_dataset(&img, &lab)), &["wrong magic number 0x504B0304", "0x00000803"]);
}

#[test]
fn idx_label_count_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (_, img, _) = idx_fixture(dir.path(), false);
    let other = byte_dataset(11, (1, 5, 4), Dataset::numbered_classes(10), 3);
    let (img2, lab2) = (dir.path().join("i2"), dir.path().join("l2"));
    write_idx_dataset(&other, &img2, &lab2).unwrap();
    assert_contains(&format_error(read_idx_dataset(&img, &lab2)), &["11 labels", "12 images"]);
}

#[test]
fn mnist_test_set_if_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist-t10k");
    let (img, lab) = (dir.join("t10k-images-idx3-ubyte.gz"), dir.join("t10k-labels-idx1-ubyte.gz"));
    if !img.exists() || !lab.exists() {
        return;
    }
    let ds = read_idx_dataset(&img, &lab).unwrap();
    assert_eq!(ds.len(), 10_000);
    assert_eq!(ds.shape, (1, 28, 28));
    assert_eq!(ds.num_classes(), 10);
    assert!(ds.labels.iter().all(|&y| y < 10));
    assert!(ds.class_counts().iter().all(|&c| c > 800));
    assert!(ds.pixels().iter().all(|&x| (0.0..=1.0).contains(&x)));
}

// ---------------------------------------------------------------- CIFAR

#[test]
fn cifar10_round_trip_over_two_batches() {
    let dir = tempfile::tempdir().unwrap();
    let a = byte_dataset(5, (3, 32, 32), names(&CIFAR10_CLASSES), 4);
    let b = byte_dataset(3, (3, 32, 32), names(&CIFAR10_CLASSES), 5);
    let (pa, pb) = (dir.path().join("data_batch_1.bin"), dir.path().join("data_batch_2.bin"));
    write_cifar10(&a, &pa).unwrap();
    write_cifar10(&b, &pb).unwrap();
    assert_eq!(fs::metadata(&pa).unwrap().len(), 5 * 3073);
    let paths: Vec<PathBuf> = vec![pa, pb];
    let back = read_cifar10(&paths).unwrap();
    let want = a.concat(&b).unwrap();
    assert_eq!(back.pixels(), want.pixels());
    assert_eq!(back.labels, want.labels);
    assert_eq!(back.class_names[3], "cat");
}

#[test]
fn cifar100_round_trip_fine_and_coarse() {
    let dir = tempfile::tempdir().unwrap();
    let mut ds = byte_dataset(6, (3, 32, 32), names(&CIFAR100_FINE_CLASSES), 6);
    ds.labels = vec![0, 49, 99, 4, 30, 72];
    ds.attributes.group = Some(vec![4, 10, 13, 0, 0, 0]);
    let path = dir.path().join("test.bin");
    write_cifar100(&ds, &path, true).unwrap();
    let fine = read_cifar100(&[&path], true).unwrap();
    assert_eq!(fine.pixels(), ds.pixels());
    assert_eq!(fine.labels, ds.labels);
    assert_eq!(fine.attributes.group, ds.attributes.group);
    assert_eq!(fine.class_names[49], "mountain");
    let coarse = read_cifar100(&[&path], false).unwrap();
    assert_eq!(coarse.labels, vec![4, 10, 13, 0, 0, 0]);
    assert_eq!(coarse.attributes.group, Some(ds.labels.clone()));
    assert_eq!(coarse.num_classes(), 20);
}

#[test]
fn cifar_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let ds = byte_dataset(2, (3, 32, 32), names(&CIFAR10_CLASSES), 7);
    let path = dir.path().join("data_batch_1.bin");
    write_cifar10(&ds, &path).unwrap();
    truncate(&path, 3073 + 100);
    assert_contains(
        &format_error(read_cifar10(&[&path])),
        &["data_batch_1.bin", "not a multiple of the 3073-byte record", "truncated"],
    );
    // A CIFAR-10 file given to the CIFAR-100 reader has the wrong record size too.
    write_cifar10(&ds, &path).unwrap();
    assert_contains(&format_error(read_cifar100(&[&path], true)), &["3074-byte", "read_cifar10"]);
}

#[test]
fn cifar_label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.bin");
    let mut bytes = vec![0u8; 2 * 3073];
    bytes[3073] = 12;
    fs::write(&path, bytes).unwrap();
    assert_contains(&format_error(read_cifar10(&[&path])), &["record 1", "label 12", "0..9"]);
    let mut bytes = vec![0u8; 3074];
    bytes[1] = 100;
    fs::write(&path, bytes).unwrap();
    assert_contains(&format_error(read_cifar100(&[&path], true)), &["fine label 100"]);
}

// ---------------------------------------------------------------- Parquet

#[test]
fn parquet_round_trip_rgb_and_gray() {
    let dir = tempfile::tempdir().unwrap();
    for shape in [(3, 6, 5), (1, 4, 4)] {
        let ds = byte_dataset(9, shape, names(&["a", "b", "c"]), 8);
        let path = dir.path().join(format!("train-{}.parquet", shape.0));
        write_hf_parquet(&path, &ds, "img", "label").unwrap();
        let back = read_hf_parquet(&path, "img", "label", Some(ds.class_names.clone())).unwrap();
        assert_eq!(back.shape, shape);
        assert_eq!(back.pixels(), ds.pixels());
        assert_eq!(back.labels, ds.labels);
        assert_eq!(back.class_names, ds.class_names);
        let numbered = read_hf_parquet(&path, "img", "label", None).unwrap();
        assert_eq!(numbered.class_names, names(&["0", "1", "2"]));
    }
}

#[test]
fn parquet_plain_binary_image_column() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let ds = byte_dataset(2, (3, 2, 2), names(&["x", "y"]), 9);
    // Build PNGs through the struct writer, then re-store them as a plain binary column.
    let tmp = dir.path().join("struct.parquet");
    write_hf_parquet(&tmp, &ds, "image", "label").unwrap();
    let df = ParquetReader::new(fs::File::open(&tmp).unwrap()).finish().unwrap();
    let bytes = df.column("image").unwrap().struct_().unwrap().field_by_name("bytes").unwrap();
    let labels = Series::new("y".into(), vec![1i32, 0]);
    let mut flat = DataFrame::new(2, vec![bytes.with_name("png".into()).into(), labels.into()]).unwrap();
    let path = dir.path().join("flat.parquet");
    ParquetWriter::new(fs::File::create(&path).unwrap()).finish(&mut flat).unwrap();
    let back = read_hf_parquet(&path, "png", "y", None).unwrap();
    assert_eq!(back.pixels(), ds.pixels());
    assert_eq!(back.labels, vec![1, 0]);
}

#[test]
fn parquet_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let ds = byte_dataset(4, (3, 8, 8), names(&["a", "b"]), 10);
    let path = dir.path().join("test.parquet");
    write_hf_parquet(&path, &ds, "image", "label").unwrap();
    let len = fs::metadata(&path).unwrap().len() as usize;
    truncate(&path, len / 2);
    assert_contains(&format_error(read_hf_parquet(&path, "image", "label", None)), &["test.parquet", "truncated"]);
    fs::write(&path, b"PAR1").unwrap();
    assert_contains(&format_error(read_hf_parquet(&path, "image", "label", None)), &["truncated or not Parquet"]);
}

#[test]
fn parquet_missing_column_lists_available() {
    let dir = tempfile::tempdir().unwrap();
    let ds = byte_dataset(2, (1, 3, 3), names(&["a", "b"]), 11);
    let path = dir.path().join("test.parquet");
    write_hf_parquet(&path, &ds, "image", "label").unwrap();
    let msg = format_error(read_hf_parquet(&path, "image", "fine_label", None));
    assert_contains(&msg, &["no column named \"fine_label\"", "available columns: image, label"]);
    let msg = format_error(read_hf_parquet(&path, "label", "image", None));
    assert_contains(&msg, &["image column \"label\"", "expected a struct"]);
    assert!(read_hf_parquet(&path, "label", "label", None).is_err());
}

#[test]
fn parquet_label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let ds = byte_dataset(4, (1, 3, 3), names(&["a", "b", "c", "d"]), 12);
    let path = dir.path().join("test.parquet");
    write_hf_parquet(&path, &ds, "image", "label").unwrap();
    let msg = format_error(read_hf_parquet(&path, "image", "label", Some(names(&["a", "b"]))));
    assert_contains(&msg, &["label 2 in row 2", "out of range", "2 class names"]);
}

// ---------------------------------------------------------------- image folders

fn write_png(path: &Path, w: u32, h: u32, gray: bool) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    if gray {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 40 + y) % 256) as u8])).save(path).unwrap();
    } else {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 30 % 256) as u8, (y * 30 % 256) as u8, 200])).save(path).unwrap();
    }
}

#[test]
fn image_folder_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ds = byte_dataset(7, (3, 5, 6), names(&["bird", "cat", "dog"]), 13);
    write_image_folder(&ds, dir.path()).unwrap();
    // Hidden files and files at the root are ignored.
    fs::write(dir.path().join("cat/.DS_Store"), b"junk").unwrap();
    fs::write(dir.path().join("README.txt"), b"about").unwrap();
    let back = read_image_folder(dir.path(), None).unwrap();
    // The folder orders samples by class: compare with a class-sorted copy.
    let mut order: Vec<usize> = (0..ds.len()).collect();
    order.sort_by_key(|&i| ds.labels[i]);
    let want = ds.select(&order).unwrap();
    assert_eq!(back.class_names, ds.class_names);
    assert_eq!(back.labels, want.labels);
    assert_eq!(back.pixels(), want.pixels());
}

#[test]
fn image_folder_channels_sizes_and_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_png(&root.join("a/1.png"), 4, 3, true);
    write_png(&root.join("b/2.png"), 4, 3, true);
    let gray = read_image_folder(root, None).unwrap();
    assert_eq!(gray.shape, (1, 3, 4));
    assert_eq!(gray.image(0)[1], 40.0 / 255.0);

    write_png(&root.join("b/3.png"), 4, 3, false);
    let mixed = read_image_folder(root, None).unwrap();
    assert_eq!(mixed.shape, (3, 3, 4));
    assert_eq!(mixed.labels, vec![0, 1, 1]);
    // The grayscale image was replicated into all three channels.
    assert_eq!(&mixed.image(0)[..12], &mixed.image(0)[12..24]);

    image::RgbImage::from_pixel(8, 8, image::Rgb([250, 10, 10])).save(root.join("b/4.jpg")).unwrap();
    let msg = format_error(read_image_folder(root, None));
    assert_contains(&msg, &["4.jpg", "8x8", "resize"]);
    let resized = read_image_folder(root, Some((6, 6))).unwrap();
    assert_eq!(resized.shape, (3, 6, 6));
    let red = resized.image(3)[0];
    assert!((red - 250.0 / 255.0).abs() < 0.05, "JPEG red channel {red}");
}

#[test]
fn image_folder_non_image_file() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a/1.png"), 2, 2, true);
    fs::write(dir.path().join("a/notes.txt"), b"not an image").unwrap();
    assert_contains(&format_error(read_image_folder(dir.path(), None)), &["notes.txt", "not a PNG or JPEG"]);
    fs::write(dir.path().join("a/notes.txt"), b"\x89PNG\r\n\x1a\n broken").unwrap();
    assert_contains(&format_error(read_image_folder(dir.path(), None)), &["notes.txt", "cannot decode"]);
}

#[test]
fn image_folder_empty_root() {
    let dir = tempfile::tempdir().unwrap();
    assert_contains(&format_error(read_image_folder(dir.path(), None)), &["no class sub-folders"]);
}

// ---------------------------------------------------------------- digits

#[test]
fn digits_known_values() {
    let ds = digits().unwrap();
    assert_eq!(ds.len(), 1797);
    assert_eq!(ds.shape, (1, 8, 8));
    assert_eq!(ds.class_counts(), vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    let first_row: Vec<f32> = [0., 0., 5., 13., 9., 1., 0., 0.].iter().map(|v| v / 16.0).collect();
    assert_eq!(&ds.image(0)[..8], first_row.as_slice());
    assert_eq!(ds.labels[..3], [0, 1, 2]);
    assert!(ds.pixels().iter().all(|&x| (0.0..=1.0).contains(&x)));
}

#[test]
fn digits_csv_from_disk_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("digits.csv");
    let good = format!("{},3\n", vec!["16"; 64].join(","));
    fs::write(&path, &good).unwrap();
    assert_eq!(read_digits_csv(&path).unwrap().labels, vec![3]);

    fs::write(&path, format!("{good}{},3\n", vec!["1"; 63].join(","))).unwrap();
    assert_contains(&format_error(read_digits_csv(&path)), &["line 2 has 64 values", "expected 65"]);
    fs::write(&path, format!("{},a\n", vec!["1"; 64].join(","))).unwrap();
    assert_contains(&format_error(read_digits_csv(&path)), &["column 65", "\"a\" is not"]);
    fs::write(&path, format!("20,{},3\n", vec!["1"; 63].join(","))).unwrap();
    assert_contains(&format_error(read_digits_csv(&path)), &["pixel value 20", "0..16"]);
    fs::write(&path, format!("{},11\n", vec!["1"; 64].join(","))).unwrap();
    assert_contains(&format_error(read_digits_csv(&path)), &["label 11"]);
}

// ---------------------------------------------------------------- synthetic data

#[test]
fn synthetic_is_deterministic_and_seed_dependent() {
    let cfg = SyntheticConfig { num_classes: 5, samples_per_class: 8, size: 16, ..Default::default() };
    let a = generate(&cfg).unwrap();
    let b = generate(&cfg).unwrap();
    assert_eq!(a.pixels(), b.pixels());
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.shape, (3, 16, 16));
    assert_eq!(a.class_counts(), vec![8; 5]);
    assert!(a.attributes.group.is_none());
    let c = generate(&SyntheticConfig { seed: 1, ..cfg.clone() }).unwrap();
    assert_ne!(a.pixels(), c.pixels());
    assert!(a.pixels().iter().all(|&x| (0.0..=1.0).contains(&x)));
}

#[test]
fn synthetic_classes_differ_more_than_samples() {
    // A sanity check that class structure dominates jitter: nearest class mean classifies
    // most samples correctly.
    let ds = generate(&SyntheticConfig { samples_per_class: 40, ..Default::default() }).unwrap();
    let per = ds.image_len();
    let mut means = vec![vec![0f32; per]; ds.num_classes()];
    for i in 0..ds.len() {
        for (m, x) in means[ds.labels[i] as usize].iter_mut().zip(ds.image(i)) {
            *m += x / 40.0;
        }
    }
    let correct = (0..ds.len())
        .filter(|&i| {
            let d = |m: &Vec<f32>| m.iter().zip(ds.image(i)).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
            let best = (0..means.len()).min_by(|&a, &b| d(&means[a]).total_cmp(&d(&means[b]))).unwrap();
            best as u32 == ds.labels[i]
        })
        .count();
    let acc = correct as f32 / ds.len() as f32;
    assert!(acc > 0.5 && acc < 1.0, "nearest-mean accuracy {acc}");
}

#[test]
fn synthetic_spurious_rate_is_honoured() {
    for kind in [SpuriousKind::CornerPatch, SpuriousKind::BackgroundTint] {
        let cfg = SyntheticConfig {
            num_classes: 4,
            samples_per_class: 50,
            spurious: Some(Spurious { class: 2, rate: 0.9, other_rate: 0.1, kind }),
            ..Default::default()
        };
        let ds = generate(&cfg).unwrap();
        let groups = ds.attributes.group.clone().unwrap();
        for c in 0..4u32 {
            let idx: Vec<usize> = (0..ds.len()).filter(|&i| ds.labels[i] == c).collect();
            let rate = idx.iter().filter(|&&i| groups[i] == GROUP_SPURIOUS).count() as f32 / idx.len() as f32;
            let want = if c == 2 { 0.9 } else { 0.1 };
            assert!((rate - want).abs() <= 0.02, "class {c}: rate {rate}, want {want}");
        }
        if kind == SpuriousKind::CornerPatch {
            // The patch is visible: the top-left pixel is near magenta exactly when flagged.
            for (i, &g) in groups.iter().enumerate() {
                let img = ds.image(i);
                let plane = 32 * 32;
                let magenta = img[0] > 0.8 && img[plane] < 0.2 && img[2 * plane] > 0.8;
                assert_eq!(magenta, g == GROUP_SPURIOUS, "sample {i}");
            }
        }
    }
}

#[test]
fn synthetic_subgroup_is_marked() {
    let cfg = SyntheticConfig {
        num_classes: 3,
        samples_per_class: 40,
        subgroup: Some(Subgroup { class: 1, fraction: 0.25, kind: SubgroupKind::Colour }),
        spurious: Some(Spurious::new(0, 0.5, SpuriousKind::BackgroundTint)),
        ..Default::default()
    };
    let ds = generate(&cfg).unwrap();
    let groups = ds.attributes.group.clone().unwrap();
    let minority: Vec<usize> = (0..ds.len()).filter(|&i| groups[i] & GROUP_SUBGROUP != 0).collect();
    assert_eq!(minority.len(), 10);
    assert!(minority.iter().all(|&i| ds.labels[i] == 1));
    assert_eq!(groups.iter().filter(|&&g| g & GROUP_SPURIOUS != 0).count(), 20);
}

// ---------------------------------------------------------------- transforms

#[test]
fn augmentation_keeps_shape_and_is_reproducible() {
    let ds = generate(&SyntheticConfig { num_classes: 2, samples_per_class: 8, ..Default::default() }).unwrap();
    let shape = ds.shape;
    let run = |epoch: u64| {
        let mut buf = ds.pixels().to_vec();
        Augment::cifar().apply_batch(&mut buf, shape, &mut stream_at(3, "augment", epoch)).unwrap();
        buf
    };
    let (a, b, c) = (run(0), run(0), run(1));
    assert_eq!(a.len(), ds.pixels().len());
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, ds.pixels());
    let mut same = ds.pixels().to_vec();
    Augment::none().apply_batch(&mut same, shape, &mut stream(0, "x")).unwrap();
    assert_eq!(same, ds.pixels());
    // A flip alone permutes each row: per-image sums are unchanged.
    let mut flipped = ds.pixels().to_vec();
    Augment { crop_padding: 0, hflip: true }.apply_batch(&mut flipped, shape, &mut stream(0, "x")).unwrap();
    for (x, y) in flipped.chunks(ds.image_len()).zip(ds.pixels().chunks(ds.image_len())) {
        let (sx, sy): (f32, f32) = (x.iter().sum(), y.iter().sum());
        assert!((sx - sy).abs() < 1e-3);
    }
}

#[test]
fn deterministic_transforms() {
    let ds = byte_dataset(3, (3, 4, 4), names(&["a"]), 14);
    let n = normalise(&ds, &[0.5, 0.5, 0.5], &[0.5, 0.5, 0.5]).unwrap();
    assert!((n.pixels()[0] - (ds.pixels()[0] - 0.5) * 2.0).abs() < 1e-6);
    assert!(normalise(&ds, &[0.5], &[0.5]).unwrap_err().to_string().contains("3 channels"));
    assert!(normalise(&ds, &[0.; 3], &[1., 0., 1.]).unwrap_err().to_string().contains("channel 1"));
    let g = to_grayscale(&ds).unwrap();
    assert_eq!(g.shape, (1, 4, 4));
    assert_eq!(to_rgb(&g).unwrap().shape, (3, 4, 4));
    let r = resize(&ds, (8, 2)).unwrap();
    assert_eq!((r.shape, r.len()), ((3, 8, 2), 3));
}

// ---------------------------------------------------------------- sampling

#[test]
fn split_is_stratified_and_seeded() {
    let ds = digits().unwrap();
    let (part, rest) = ds.split(0.2, 3, true).unwrap();
    assert_eq!(part.len(), 359);
    assert_eq!(part.len() + rest.len(), ds.len());
    for (p, all) in part.class_counts().iter().zip(ds.class_counts()) {
        assert!((*p as f64 - all as f64 * 0.2).abs() <= 1.0);
    }
    let mut seen: Vec<usize> = part.attributes.source_index.clone().unwrap();
    seen.extend(rest.attributes.source_index.clone().unwrap());
    seen.sort_unstable();
    assert_eq!(seen, (0..ds.len()).collect::<Vec<_>>());
    let (again, _) = ds.split(0.2, 3, true).unwrap();
    assert_eq!(again.attributes.source_index, part.attributes.source_index);
    let (other, _) = ds.split(0.2, 4, true).unwrap();
    assert_ne!(other.attributes.source_index, part.attributes.source_index);
    let (exact, _) = ds.split(100usize, 0, false).unwrap();
    assert_eq!(exact.len(), 100);
    assert!(ds.split(1.5, 0, true).is_err());
    assert!(ds.split(5000usize, 0, true).is_err());
}

#[test]
fn class_subset_and_per_class_sample() {
    let ds = digits().unwrap();
    let sub = ds.class_subset(&[7, 2], true).unwrap();
    assert_eq!(sub.class_names, names(&["7", "2"]));
    assert_eq!(sub.class_counts(), vec![179, 177]);
    let kept = ds.class_subset(&[7, 2], false).unwrap();
    assert_eq!(kept.num_classes(), 10);
    assert!(kept.labels.iter().all(|&y| y == 7 || y == 2));
    assert!(ds.class_subset(&[10], true).is_err());
    assert!(ds.class_subset(&[1, 1], true).is_err());

    let few = ds.per_class_sample(3, 9).unwrap();
    assert_eq!(few.class_counts(), vec![3; 10]);
    assert_eq!(few.attributes.source_index, ds.per_class_sample(3, 9).unwrap().attributes.source_index);
    let msg = ds.per_class_sample(175, 0).unwrap_err().to_string();
    assert_contains(&msg, &["class 8", "174 samples"]);
}

#[test]
fn batches_cover_a_seeded_permutation() {
    let ds = digits().unwrap().per_class_sample(5, 0).unwrap();
    let batches: Vec<Vec<usize>> = ds.batches(8, false, 2, 0).unwrap().collect();
    assert_eq!(batches.len(), 7);
    let flat: Vec<usize> = batches.concat();
    assert_eq!(flat, ds.shuffled_indices(2, 0));
    let mut sorted = flat.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    assert_ne!(ds.shuffled_indices(2, 1), ds.shuffled_indices(2, 0));
    let mut dropped = ds.batches(8, true, 2, 0).unwrap();
    assert_eq!(dropped.len(), 6);
    assert!(dropped.all(|b| b.len() == 8));
    assert!(Batches::sequential(5, 0).is_err());
    assert_eq!(Batches::sequential(5, 2).unwrap().collect::<Vec<_>>(), vec![vec![0, 1], vec![2, 3], vec![4]]);
}

#[test]
fn place_on_canvas_keeps_content_labels_and_seed() {
    let mut px = vec![0f32; 3 * 2 * 3];
    for (i, v) in px.iter_mut().enumerate() {
        *v = (i % 6) as f32 / 10.0 + 0.05;
    }
    let ds = Dataset::new(px, (2, 1, 3), vec![0, 1, 1], vec!["a".into(), "b".into()]).unwrap();
    let placed = place_on_canvas(&ds, (4, 5), 2, 0.0, 3).unwrap();
    assert_eq!(placed.shape, (2, 4, 5));
    assert_eq!(placed.labels, vec![0, 1, 1, 0, 1, 1]);
    for (k, img) in placed.pixels().chunks(2 * 20).enumerate() {
        // Without noise, each channel holds exactly the source row, somewhere.
        for ch in 0..2 {
            let plane = &img[ch * 20..][..20];
            let want = &ds.image(k % 3)[ch * 3..][..3];
            let found = plane.windows(3).enumerate().any(|(p, w)| p % 5 <= 2 && w == want);
            assert!(found, "copy {k} channel {ch} lost its content");
            assert!((plane.iter().sum::<f32>() - want.iter().sum::<f32>()).abs() < 1e-6);
        }
    }
    // Positions vary across copies, and the same seed repeats them.
    let many = place_on_canvas(&ds, (8, 8), 20, 0.0, 3).unwrap();
    let first: Vec<usize> = many.pixels().chunks(128).map(|img| img.iter().position(|&v| v > 0.0).unwrap()).collect();
    assert!(first.iter().collect::<std::collections::HashSet<_>>().len() > 5);
    assert_eq!(many.pixels(), place_on_canvas(&ds, (8, 8), 20, 0.0, 3).unwrap().pixels());
    let noisy = place_on_canvas(&ds, (8, 8), 1, 0.1, 3).unwrap();
    assert!(noisy.pixels().iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(noisy.pixels().iter().filter(|&&v| v > 0.0).count() > 3 * 6);
    let err = place_on_canvas(&ds, (4, 2), 1, 0.0, 0).unwrap_err().to_string();
    assert!(err.contains("smaller than"), "{err}");
    assert!(place_on_canvas(&ds, (8, 8), 0, 0.0, 0).is_err());
    assert!(place_on_canvas(&ds, (8, 8), 1, f32::NAN, 0).is_err());
}

/// A bad index is an error that says what was wrong, from `batch` and `try_image`; no rows
/// and no columns are handled by the SVM's column means.
#[test]
fn bad_indices_are_errors_not_panics() {
    let ds = transferlab::data::digits().unwrap();
    let e = ds.batch(&[0, ds.len()], &candle_core::Device::Cpu).unwrap_err().to_string();
    assert!(e.contains(&format!("{} is out of range for a dataset of {} samples", ds.len(), ds.len())), "{e}");
    assert!(ds.try_image(ds.len() + 5).is_err());
    assert_eq!(transferlab::analysis::svm::column_means(&[], 3), vec![0.0; 3]);
    assert!(transferlab::analysis::svm::column_means(&[], 0).is_empty());
}
