"""`just bench`: transferlab against PyTorch CPU on the same models, batch and threads.

Interleaved A/B: each round runs every (model, mode) once in transferlab and once in
PyTorch, each in a fresh process; the table gives the median images/s over the rounds, the
ratio ours/PyTorch, and each side's peak resident memory.

Usage: compare.py RUST_BENCH_BINARY PYTHON [--rounds 5] [--batch 128] [--threads 2] [--scaling-rounds 3]

Then a scaling table (batch 32/128/256, 1 and 2 threads) for the thin-channel networks, and
the real-scale measurements.
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
# (model, mode, steps at batch 128): each measurement is a few seconds of work on 2 cores.
CASES = [("cnn3", "train", 6), ("cnn3", "infer", 12), ("resnet20", "train", 3), ("resnet20", "infer", 6),
         ("preact-resnet18", "train", 1), ("preact-resnet18", "infer", 3),
         ("badnets-cnn", "train", 10), ("badnets-cnn", "infer", 20)]
# Where the speed moves with batch and threads: the thin-channel networks, where we lose.
SCALING_MODELS = ("resnet20", "badnets-cnn")
SCALING_BATCHES = (32, 128, 256)
SCALING_THREADS = (1, 2)


def measure(cmd, env):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def thread_env(threads):
    return dict(os.environ, OMP_NUM_THREADS=str(threads), RAYON_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def interleaved(args, runs, rounds, label):
    """Median images/s and peak MB of each run, both sides, over interleaved rounds.

    `runs` holds (key, model, mode, batch, steps, threads); every round runs each once in
    transferlab and once in PyTorch, each in a fresh process, so drift hits both sides alike."""
    ref = str(pathlib.Path(__file__).with_name("pytorch_reference.py"))
    samples = {run[0]: {"ours": [], "torch": []} for run in runs}
    for r in range(rounds):
        for key, model, mode, batch, steps, threads in runs:
            env = thread_env(threads)
            samples[key]["ours"].append(measure([args.rust, model, mode, str(batch), str(steps)], env))
            samples[key]["torch"].append(measure([args.python, ref, model, mode, str(batch), str(steps), str(threads)], env))
        print(f"{label}: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    med = lambda key, side, field: statistics.median(x[field] for x in samples[key][side])
    return {key: {side: (med(key, side, "images_per_s"), med(key, side, "peak_rss_mb")) for side in ("ours", "torch")}
            for key in samples}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rust")
    ap.add_argument("python")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scaling-rounds", type=int, default=3, help="rounds of the batch/threads table (0 skips it)")
    args = ap.parse_args()
    runs = [((model, mode), model, mode, args.batch, max(1, steps * 128 // args.batch), args.threads)
            for model, mode, steps in CASES]
    med = interleaved(args, runs, args.rounds, "main table")
    print(f"batch {args.batch}, {args.threads} threads, median of {args.rounds} interleaved rounds")
    print("| model | mode | transferlab img/s | PyTorch img/s | ratio | transferlab peak MB | PyTorch peak MB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for model, mode, _ in CASES:
        (o, om), (t, tm) = med[(model, mode)]["ours"], med[(model, mode)]["torch"]
        print(f"| {model} | {mode} | {o:,.0f} | {t:,.0f} | {o / t:.2f}x | {om:,.0f} | {tm:,.0f} | {om / tm:.2f}x |")
    if args.scaling_rounds > 0:
        scaling(args)
    scale(args, thread_env(args.threads))


def scaling(args):
    """Images/s against batch size and thread count, so a reader sees where the ratio moves."""
    steps = {(model, mode): s for model, mode, s in CASES}
    runs = [((model, mode, batch, threads), model, mode, batch, max(1, steps[(model, mode)] * 128 // batch), threads)
            for model in SCALING_MODELS for mode in ("train", "infer")
            for batch in SCALING_BATCHES for threads in SCALING_THREADS]
    med = interleaved(args, runs, args.scaling_rounds, "scaling table")
    print()
    print(f"scaling: median of {args.scaling_rounds} interleaved rounds, transferlab / PyTorch img/s")
    print("| model | mode | batch | 1 thread | 2 threads |")
    print("|---|---|---|---|---|")
    for model in SCALING_MODELS:
        for mode in ("train", "infer"):
            for batch in SCALING_BATCHES:
                cells = []
                for threads in SCALING_THREADS:
                    o, t = med[(model, mode, batch, threads)]["ours"][0], med[(model, mode, batch, threads)]["torch"][0]
                    cells.append(f"{o:,.0f} / {t:,.0f} = {o / t:.2f}x")
                print(f"| {model} | {mode} | {batch} | {' | '.join(cells)} |")


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
