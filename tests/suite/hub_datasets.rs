//! Datasets by hub id from a loopback hub laid out like the real repositories.

use transferlab::data::{write_hf_parquet, Dataset};
use transferlab::hub::{load_dataset, DatasetRequest, Hub, HubConfig, LoopbackHub};

fn parquet(n: usize, shape: (usize, usize, usize), classes: usize, seed: usize, image: &str, label: &str) -> (Dataset, Vec<u8>) {
    let per = shape.0 * shape.1 * shape.2;
    let pixels: Vec<f32> = (0..n * per).map(|i| (((i * 7 + seed * 13) % 256) as f32) / 255.0).collect();
    let labels: Vec<u32> = (0..n).map(|i| ((i + seed) % classes) as u32).collect();
    let ds = Dataset::new(pixels, shape, labels, Dataset::numbered_classes(classes)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.parquet");
    write_hf_parquet(&p, &ds, image, label).unwrap();
    (ds, std::fs::read(p).unwrap())
}

const CIFAR10_CARD: &str = "---\nlicense: unknown\ntask_categories:\n- image-classification\ndataset_info:\n  config_name: plain_text\n  features:\n  - name: img\n    dtype: image\n  - name: label\n    dtype:\n      class_label:\n        names:\n          '0': airplane\n          '1': automobile\n          '2': bird\n  splits:\n  - name: train\n    num_bytes: 113648310\n    num_examples: 50000\n  - name: test\n    num_examples: 10000\nconfigs:\n- config_name: plain_text\n  data_files:\n  - split: train\n    path: plain_text/train-*\n---\n\n# Dataset Card for CIFAR-10\n";

fn cifar_like(server: &LoopbackHub) -> (Dataset, Dataset, Dataset) {
    let (a, pa) = parquet(6, (3, 4, 4), 3, 0, "img", "label");
    let (b, pb) = parquet(5, (3, 4, 4), 3, 1, "img", "label");
    let (t, pt) = parquet(4, (3, 4, 4), 3, 2, "img", "label");
    server.add_dataset_file("uoft-cs/cifar10", "README.md", CIFAR10_CARD.as_bytes().to_vec());
    server.add_dataset_file("uoft-cs/cifar10", "plain_text/train-00000-of-00002.parquet", pa);
    server.add_dataset_file("uoft-cs/cifar10", "plain_text/train-00001-of-00002.parquet", pb);
    server.add_dataset_file("uoft-cs/cifar10", "plain_text/test-00000-of-00001.parquet", pt);
    (a, b, t)
}

fn hub(endpoint: &str, cache: &std::path::Path, offline: bool) -> Hub {
    let mut c = HubConfig::new(endpoint, cache);
    c.progress = false;
    c.offline = offline;
    Hub::new(c)
}

#[test]
fn split_shards_are_joined_and_named_from_the_card() {
    let server = LoopbackHub::start().unwrap();
    let (a, b, t) = cifar_like(&server);
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(&server.endpoint(), dir.path(), false);
    let train = load_dataset(&hub, &DatasetRequest::new("uoft-cs/cifar10", "train")).unwrap();
    assert_eq!(train.len(), a.len() + b.len());
    assert_eq!(train.shape, (3, 4, 4));
    assert_eq!(train.class_names, vec!["airplane", "automobile", "bird"]);
    assert_eq!(&train.labels[..6], &a.labels[..]);
    assert_eq!(&train.labels[6..], &b.labels[..]);
    assert_eq!(&train.pixels()[..a.pixels().len()], a.pixels());
    let test = load_dataset(&hub, &DatasetRequest::new("uoft-cs/cifar10", "test")).unwrap();
    assert_eq!(test.labels, t.labels);

    // Offline, with the server gone, the same split loads from the cache.
    let endpoint = server.endpoint();
    drop(server);
    let off = hub_offline(&endpoint, dir.path());
    let again = load_dataset(&off, &DatasetRequest::new("uoft-cs/cifar10", "train")).unwrap();
    assert_eq!(again.pixels(), train.pixels());
    assert_eq!(again.class_names, train.class_names);
}

fn hub_offline(endpoint: &str, cache: &std::path::Path) -> Hub {
    hub(endpoint, cache, true)
}

#[test]
fn unknown_split_lists_the_splits_there_are() {
    let server = LoopbackHub::start().unwrap();
    cifar_like(&server);
    let dir = tempfile::tempdir().unwrap();
    let err = load_dataset(&hub(&server.endpoint(), dir.path(), false), &DatasetRequest::new("uoft-cs/cifar10", "validation")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("validation") && msg.contains("test, train"), "{msg}");
    // Offline and never fetched: the error names the repository and how to fetch it.
    let err = load_dataset(&hub_offline(&server.endpoint(), tempfile::tempdir().unwrap().path()), &DatasetRequest::new("uoft-cs/cifar10", "test")).unwrap_err();
    assert!(err.to_string().contains("tlab fetch datasets/uoft-cs/cifar10"), "{err}");
}

#[test]
fn cifar100_label_column_is_chosen() {
    let server = LoopbackHub::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Two label columns: write fine labels as "fine_label", then add coarse by a second file.
    let (ds, _) = parquet(4, (3, 2, 2), 2, 0, "img", "fine_label");
    let df = {
        use transferlab::polars::prelude::*;
        let p = dir.path().join("a.parquet");
        write_hf_parquet(&p, &ds, "img", "fine_label").unwrap();
        let mut df = ParquetReader::new(std::fs::File::open(&p).unwrap()).finish().unwrap();
        df.with_column(Series::new("coarse_label".into(), vec![0i64, 0, 0, 0]).into()).unwrap();
        let mut buf = Vec::new();
        ParquetWriter::new(&mut buf).finish(&mut df).unwrap();
        buf
    };
    let card = "---\ndataset_info:\n  config_name: cifar100\n  features:\n  - name: img\n    dtype: image\n  - name: fine_label\n    dtype:\n      class_label:\n        names:\n          '0': apple\n          '1': aquarium_fish\n  - name: coarse_label\n    dtype:\n      class_label:\n        names:\n          '0': aquatic_mammals\n---\n";
    server.add_dataset_file("uoft-cs/cifar100", "README.md", card.as_bytes().to_vec());
    server.add_dataset_file("uoft-cs/cifar100", "cifar100/test-00000-of-00001.parquet", df);
    let hub = hub(&server.endpoint(), &dir.path().join("c"), false);
    let fine = load_dataset(&hub, &DatasetRequest::new("uoft-cs/cifar100", "test")).unwrap();
    assert_eq!(fine.class_names, vec!["apple", "aquarium_fish"]);
    assert_eq!(fine.labels, ds.labels);
    let coarse = load_dataset(&hub, &DatasetRequest::new("uoft-cs/cifar100", "test").label("coarse_label")).unwrap();
    assert_eq!(coarse.class_names, vec!["aquatic_mammals"]);
    assert_eq!(coarse.labels, vec![0; 4]);
}

#[test]
fn gray_mnist_without_a_card_uses_default_columns() {
    let server = LoopbackHub::start().unwrap();
    let (ds, p) = parquet(5, (1, 3, 3), 10, 0, "image", "label");
    server.add_dataset_file("ylecun/mnist", "mnist/test-00000-of-00001.parquet", p);
    let dir = tempfile::tempdir().unwrap();
    let got = load_dataset(&hub(&server.endpoint(), dir.path(), false), &DatasetRequest::new("ylecun/mnist", "test")).unwrap();
    assert_eq!(got.shape, (1, 3, 3));
    assert_eq!(got.labels, ds.labels);
    assert_eq!(got.num_classes(), 5);
}

/// CIFAR-10 by its hub id, as a user online loads it. `just test` serves the JPEG copy in
/// ../shared/data/cifar10-jpeg as `uoft-cs/cifar10` on a loopback hub and says so in
/// `TLAB_CIFAR_HUB`; without it (no shared data), the offline error must say how to get it.
#[test]
fn cifar10_loads_by_hub_id_or_says_how_to_get_it() {
    if std::env::var("TLAB_CIFAR_HUB").is_ok() {
        let hub = Hub::from_env();
        let started = std::time::Instant::now();
        let test = load_dataset(&hub, &DatasetRequest::new("uoft-cs/cifar10", "test")).unwrap();
        let train = load_dataset(&hub, &DatasetRequest::new("uoft-cs/cifar10", "train")).unwrap();
        println!("60,000 CIFAR-10 images loaded in {:.1} s", started.elapsed().as_secs_f64());
        assert_eq!((train.len(), test.len()), (50_000, 10_000));
        assert_eq!(train.shape, (3, 32, 32));
        assert_eq!(train.class_names[0], "airplane");
        assert_eq!(train.class_counts(), vec![5000; 10]);
        assert!(train.pixels().iter().all(|p| (0.0..=1.0).contains(p)));
    } else {
        let dir = tempfile::tempdir().unwrap();
        let err = load_dataset(&hub_offline("http://127.0.0.1:9", dir.path()), &DatasetRequest::new("uoft-cs/cifar10", "test")).unwrap_err().to_string();
        assert!(err.contains("tlab fetch") && err.contains("uoft-cs/cifar10") && err.contains("serve-hub --dataset uoft-cs/cifar10="), "{err}");
    }
}
