//! Our linear SVM against liblinear on the same data: accuracy and fit time. Ignored by
//! default (needs CSV files written by a Python script with scikit-learn); run with
//! `SVM_BENCH_DIR=... cargo test --test suite analysis_svm_bench:: -- --ignored --nocapture`.

use std::time::Instant;
use transferlab::analysis::svm::{auc, balanced_accuracy, LinearSvm, SvmConfig};

fn read(path: &str) -> (Vec<f32>, Vec<bool>, usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let (mut x, mut y, mut dim) = (Vec::new(), Vec::new(), 0);
    for line in text.lines() {
        let v: Vec<f32> = line.split(',').map(|s| s.parse().unwrap()).collect();
        y.push(v[0] > 0.5);
        dim = v.len() - 1;
        x.extend_from_slice(&v[1..]);
    }
    (x, y, dim)
}

#[test]
#[ignore]
fn against_liblinear() {
    let dir = std::env::var("SVM_BENCH_DIR").expect("set SVM_BENCH_DIR");
    for name in ["small", "large"] {
        let (xtr, ytr, dim) = read(&format!("{dir}/{name}_train.csv"));
        let (xte, yte, _) = read(&format!("{dir}/{name}_test.csv"));
        for c in [0.1, 1.0] {
            let cfg = SvmConfig { c, ..SvmConfig::default() };
            let mut best = f64::INFINITY;
            let mut svm = None;
            for _ in 0..5 {
                let t = Instant::now();
                svm = Some(LinearSvm::fit(&xtr, dim, &ytr, &cfg).unwrap());
                best = best.min(t.elapsed().as_secs_f64());
            }
            let svm = svm.unwrap();
            let d = svm.decision(&xte, dim).unwrap();
            println!(
                "transferlab {name} n={} d={dim} C={c}: test balanced acc {:.4}, AUC {:.4}, fit {:.2} ms (min of 5), {} passes",
                ytr.len(),
                balanced_accuracy(&d, &yte),
                auc(&d, &yte),
                1000.0 * best,
                svm.passes
            );
        }
    }
}
