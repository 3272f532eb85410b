"""`just bench`: transferlab against PyTorch CPU on the same models, batch and threads.

Interleaved A/B: each round runs every (model, mode) once in transferlab and once in
PyTorch, each in a fresh process; the table gives the median images/s over the rounds, the
ratio ours/PyTorch, and each side's peak resident memory.

Usage: compare.py RUST_BENCH_BINARY PYTHON [--rounds 5] [--batch 128] [--threads 2]
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

# Real scale (transferlab side only, except where PyTorch's no-grad inference is the
# reference): whole-dataset evaluation of 10,000 32x32 images, batch 256, and a training epoch
# against the bare step in the same process.
SCALE = [("resnet20", "evaluate", 256, 10000), ("resnet56", "evaluate", 256, 10000),
         ("resnet20", "evaluate-graph", 256, 10000), ("resnet20", "epoch", 128, 10000)]
CASES = [("cnn3", "train", 6), ("cnn3", "infer", 12), ("resnet20", "train", 3), ("resnet20", "infer", 6),
         ("badnets-cnn", "train", 10), ("badnets-cnn", "infer", 20)]


def measure(cmd, env):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rust")
    ap.add_argument("python")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), RAYON_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    ref = str(pathlib.Path(__file__).with_name("pytorch_reference.py"))
    results = {case: {"ours": [], "torch": []} for case in CASES}
    for r in range(args.rounds):
        for case in CASES:
            model, mode, steps = case
            ours = measure([args.rust, model, mode, str(args.batch), str(steps)], env)
            torch = measure([args.python, ref, model, mode, str(args.batch), str(steps), str(args.threads)], env)
            results[case]["ours"].append(ours)
            results[case]["torch"].append(torch)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"batch {args.batch}, {args.threads} threads, median of {args.rounds} interleaved rounds")
    print(f"| model | mode | transferlab img/s | PyTorch img/s | ratio | transferlab peak MB | PyTorch peak MB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for case in CASES:
        model, mode, _ = case
        o = statistics.median(x["images_per_s"] for x in results[case]["ours"])
        t = statistics.median(x["images_per_s"] for x in results[case]["torch"])
        om = statistics.median(x["peak_rss_mb"] for x in results[case]["ours"])
        tm = statistics.median(x["peak_rss_mb"] for x in results[case]["torch"])
        print(f"| {model} | {mode} | {o:,.0f} | {t:,.0f} | {o / t:.2f}x | {om:,.0f} | {tm:,.0f} | {om / tm:.2f}x |")
    scale(args, env)


def scale(args, env):
    """Each real-scale measurement once, in a fresh process; PyTorch's no-grad inference at the
    same batch as the reference for the evaluation rows."""
    ref = str(pathlib.Path(__file__).with_name("pytorch_reference.py"))
    print()
    print("real scale: 10,000 images of 32x32, one run each")
    print("| model | measurement | transferlab img/s | transferlab peak MB | reference |")
    print("|---|---|---|---|---|")
    for model, mode, batch, images in SCALE:
        try:
            ours = measure([args.rust, model, mode, str(batch), str(images)], env)
        except subprocess.CalledProcessError as e:
            print(f"| {model} | {mode} | failed (exit {e.returncode}: killed for memory?) | - | - |")
            continue
        if mode == "epoch":
            reference = f"bare step {ours['step_images_per_s']:,.0f} img/s: epoch/step {ours['epoch_over_step']:.2f}"
        elif mode == "evaluate":
            t = measure([args.python, ref, model, "infer", str(batch), str(images // batch), str(args.threads)], env)
            reference = f"PyTorch no_grad {t['images_per_s']:,.0f} img/s, {t['peak_rss_mb']:,.0f} MB: {ours['images_per_s'] / t['images_per_s']:.2f}x"
        else:
            reference = "evaluation as it was before graph-free inference (outputs keep the graph)"
        print(f"| {model} | {mode} | {ours['images_per_s']:,.0f} | {ours['peak_rss_mb']:,.0f} | {reference} |")


if __name__ == "__main__":
    main()
