//! Natural backdoor datasets on annotations with known structure.

use serde_json::json;
use transferlab::analysis::natural_backdoor_datasets::{run, synthetic_coco_json, Centrality, MultiLabel, NaturalBackdoorConfig};
use transferlab::report::Outcome;

/// sunglasses (1) co-occurs 15 times with each of dog, cat, car, boat; dog and cat share 20
/// images (so only one of them can be chosen); tree co-occurs with dog only.
fn fixture() -> String {
    let mut images = Vec::new();
    let mut anns = Vec::new();
    let mut add = |cats: &[u64]| {
        let id = images.len() as u64 + 100;
        images.push(json!({"id": id, "width": 640}));
        for &c in cats {
            anns.push(json!({"image_id": id, "category_id": c, "bbox": [1, 2, 3, 4]}));
        }
    };
    for c in [2, 3, 4, 5] {
        for _ in 0..30 {
            add(&[c]);
        }
        for _ in 0..15 {
            add(&[c, 1]);
        }
    }
    for _ in 0..20 {
        add(&[2, 3]);
    }
    for _ in 0..12 {
        add(&[2, 6]);
    }
    let names = ["sunglasses", "dog", "cat", "car", "boat", "tree"];
    let cats: Vec<_> = names.iter().enumerate().map(|(i, n)| json!({"id": i + 1, "name": n, "supercategory": "x"})).collect();
    json!({"info": {}, "images": images, "annotations": anns, "categories": cats}).to_string()
}

#[test]
fn finds_the_planted_trigger_and_an_independent_class_set() {
    let m = MultiLabel::from_coco_json(&fixture()).unwrap();
    assert_eq!(m.counts(), vec![60, 77, 65, 45, 45, 12]);
    let r = run(&m, &NaturalBackdoorConfig { triggers: 2, ..Default::default() }).unwrap();
    let top = &r.datasets[0];
    assert_eq!(m.categories[top.trigger], "sunglasses");
    assert_eq!(top.centrality, 4.0);
    // dog beats cat on image count; car and boat are independent of both.
    assert_eq!(top.classes, vec![1, 3, 4]);
    assert_eq!(top.poisoned.len(), 45);
    assert_eq!(top.clean.len(), 62 + 30 + 30);
    let poisoned = r.subset(0, true).unwrap();
    assert_eq!(poisoned.height(), 45);
    assert_eq!(poisoned.get_column_names().iter().map(|s| s.as_str()).collect::<Vec<_>>(), ["image_id", "class_index", "class"]);
    assert_eq!(r.to_dataframe().unwrap().height(), 2);
    assert!(r.figure().unwrap().to_png().unwrap().len() > 1000);
    assert!(r.subset(5, true).is_err());
    let pr = run(&m, &NaturalBackdoorConfig { centrality: Centrality::PageRank, triggers: 1, ..Default::default() }).unwrap();
    assert_eq!(m.categories[pr.datasets[0].trigger], "sunglasses");
}

#[test]
fn reads_files_and_generated_annotations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("instances.json");
    std::fs::write(&path, synthetic_coco_json(600, 3)).unwrap();
    let m = MultiLabel::read_coco(&path).unwrap();
    assert_eq!(m.image_ids.len(), 600);
    let r = run(&m, &NaturalBackdoorConfig::default()).unwrap();
    // person is in half of all images, so it is the most central trigger; no two selected
    // classes are planted partners.
    assert_eq!(m.categories[r.datasets[0].trigger], "person");
    let chosen: Vec<&str> = r.datasets[0].classes.iter().map(|&c| m.categories[c].as_str()).collect();
    assert!(!(chosen.contains(&"dog") && chosen.contains(&"cat")), "{chosen:?}");
    assert!(chosen.len() >= 6, "{chosen:?}");
    assert_eq!(synthetic_coco_json(50, 1), synthetic_coco_json(50, 1));
}

#[test]
fn bad_annotations_are_refused() {
    let bad = r#"{"images": [{"id": 1}], "annotations": [{"image_id": 1, "category_id": 5}], "categories": [{"id": 1, "name": "a"}]}"#;
    assert!(MultiLabel::from_coco_json(bad).unwrap_err().to_string().contains("unknown category_id 5"));
    assert!(MultiLabel::from_coco_json("{}").unwrap_err().to_string().contains("COCO"));
    let two = r#"{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}"#;
    let m = MultiLabel::from_coco_json(two).unwrap();
    assert!(run(&m, &NaturalBackdoorConfig::default()).unwrap_err().to_string().contains("at least 3"));
    assert!(MultiLabel::read_coco("/nonexistent/x.json").is_err());
}
