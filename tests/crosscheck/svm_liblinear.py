"""liblinear's answer to a problem both sides generate from formula.uniform: writes
tests/fixtures/crosscheck/svm_liblinear.json, against which tests/suite/analysis_svm_bench.rs
checks transferlab's LinearSvm (accuracy, AUC, hyperplane, predictions).

Usage: python tests/crosscheck/svm_liblinear.py   (numpy and scikit-learn; no GPU, seconds)
"""

import json
import os

import numpy as np
import sklearn
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.svm import LinearSVC

from formula import uniform

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "crosscheck", "svm_liblinear.json")
N, D, SHIFT = 600, 32, 0.2


def problem(split: str):
    """About 60 % positives; class means at +-SHIFT times one direction, uniform noise:
    overlapping classes (~87 % accuracy), so C and the balancing matter."""
    y = uniform(f"svm.{split}.y", N) > -0.1
    direction = uniform("svm.direction", D)
    shift = np.where(y, SHIFT, -SHIFT)[:, None] * direction[None, :]
    x = uniform(f"svm.{split}.x", N * D).reshape(N, D) + shift
    return x.astype(np.float32), y


def main():
    xtr, ytr = problem("train")
    xte, yte = problem("test")
    fits = []
    for c in [0.1, 1.0]:
        # liblinear's dual coordinate descent on the hinge loss, bias feature 1 (as ours).
        svm = LinearSVC(loss="hinge", dual=True, C=c, tol=0.1, class_weight="balanced", intercept_scaling=1.0, max_iter=1000)
        svm.fit(xtr.astype(np.float64), ytr)
        d = svm.decision_function(xte.astype(np.float64))
        fits.append({
            "c": c,
            "w": [float(v) for v in svm.coef_[0]],
            "b": float(svm.intercept_[0]),
            "balanced_accuracy": float(balanced_accuracy_score(yte, d > 0)),
            "auc": float(roc_auc_score(yte, d)),
            "decision": [round(float(v), 6) for v in d],
        })
    with open(OUT, "w") as f:
        json.dump({"scikit_learn": sklearn.__version__, "n": N, "d": D, "shift": SHIFT, "fits": fits}, f)
    for fit in fits:
        print(f"C={fit['c']}: balanced accuracy {fit['balanced_accuracy']:.4f}, AUC {fit['auc']:.4f}")


if __name__ == "__main__":
    main()
