//! Our linear SVM against liblinear (scikit-learn's `LinearSVC(loss="hinge")`, the same dual
//! coordinate descent) on the problem tests/crosscheck/svm_liblinear.py generates from the
//! shared formula: that script wrote liblinear's hyperplane, decisions and scores to
//! tests/fixtures/crosscheck/svm_liblinear.json; we rebuild the data and fit ours.

use crate::common::uniform;
use transferlab::analysis::svm::{auc, balanced_accuracy, LinearSvm, SvmConfig};

/// The script's `problem(split)`: about 60 % positives, class means at +-shift along one
/// direction, uniform noise; the same f64 operations in the same order, then f32.
fn problem(split: &str, n: usize, d: usize, shift: f64) -> (Vec<f32>, Vec<bool>) {
    let y: Vec<bool> = uniform(&format!("svm.{split}.y"), n).into_iter().map(|u| u > -0.1).collect();
    let direction = uniform("svm.direction", d);
    let noise = uniform(&format!("svm.{split}.x"), n * d);
    let x = (0..n * d).map(|k| (noise[k] + (if y[k / d] { shift } else { -shift }) * direction[k % d]) as f32).collect();
    (x, y)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

#[test]
fn our_svm_agrees_with_liblinear() {
    let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/crosscheck/svm_liblinear.json")).unwrap()).unwrap();
    let (n, d, shift) = (fx["n"].as_u64().unwrap() as usize, fx["d"].as_u64().unwrap() as usize, fx["shift"].as_f64().unwrap());
    let (xtr, ytr) = problem("train", n, d, shift);
    let (xte, yte) = problem("test", n, d, shift);
    for fit in fx["fits"].as_array().unwrap() {
        let c = fit["c"].as_f64().unwrap();
        let svm = LinearSvm::fit(&xtr, d, &ytr, &SvmConfig { c, ..SvmConfig::default() }).unwrap();
        let ours = svm.decision(&xte, d).unwrap();
        let theirs: Vec<f64> = serde_json::from_value(fit["decision"].clone()).unwrap();
        let (bacc, area) = (balanced_accuracy(&ours, &yte), auc(&ours, &yte));
        // The script's own scores, recomputed here from its decisions: the data are the same.
        assert!((balanced_accuracy(&theirs, &yte) - fit["balanced_accuracy"].as_f64().unwrap()).abs() < 1e-9, "C={c}: the rebuilt labels differ from the script's");
        assert!((bacc - fit["balanced_accuracy"].as_f64().unwrap()).abs() < 0.01, "C={c}: balanced accuracy {bacc} vs liblinear {}", fit["balanced_accuracy"]);
        assert!((area - fit["auc"].as_f64().unwrap()).abs() < 0.01, "C={c}: AUC {area} vs liblinear {}", fit["auc"]);
        let mut w_theirs: Vec<f64> = serde_json::from_value(fit["w"].clone()).unwrap();
        w_theirs.push(fit["b"].as_f64().unwrap());
        let mut w_ours = svm.w.clone();
        w_ours.push(svm.b);
        let cos = cosine(&w_ours, &w_theirs);
        assert!(cos > 0.99, "C={c}: hyperplanes differ (cosine {cos})");
        let agree = ours.iter().zip(&theirs).filter(|(a, b)| (**a > 0.0) == (**b > 0.0)).count() as f64 / ours.len() as f64;
        assert!(agree > 0.97, "C={c}: the two SVMs agree on {:.1} % of test points", 100.0 * agree);
        eprintln!("C={c}: balanced accuracy {bacc:.4} vs {:.4}, AUC {area:.4} vs {:.4}, cosine {cos:.4}, agreement {:.3}", fit["balanced_accuracy"], fit["auc"], agree);
    }
}
