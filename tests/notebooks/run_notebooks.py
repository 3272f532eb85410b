"""Execute notebooks headless on the evcxr `rust` kernel through Jupyter's own client.

A notebook fails when any cell reports an error, prints a panic, or writes anything to stderr:
evcxr reports a `?` error in a cell only as its message on stderr, not as a failed cell, so
stderr itself is the signal (transferlab writes progress to stdout in notebooks); a barrier after
each cell makes sure late stderr is seen. Executed notebooks (with their outputs and figures) are
written to --out.

With --jobs N, N notebooks run at once, each in its own kernel: a fresh kernel spends ~25 s
loading and type-checking the dependency tree on one core (rust-analyzer inside evcxr), which a
second kernel overlaps with the other's computation. Jobs are started highest-numbered first
(the CIFAR-10 notebooks, the longest, are the last numbers), so no long one is left alone at
the end.

Usage: run_notebooks.py [--out DIR] [--show] [--jobs N] [--expect-failure] NOTEBOOK...
"""
import argparse
import concurrent.futures
import pathlib
import queue
import re
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbclient.util import run_sync

# Text that means a cell went wrong even though the kernel reported success.
FAILURE = re.compile(
    r"panicked at|^Error\b|^error(\[E\d+\])?:|Child process terminated|EVCXR_PANIC|"
    r"thread '.*' panicked|Segmentation fault",
    re.MULTILINE,
)
HEADLESS_SETUP = ":preserve_vars_on_panic 0"
# evcxr forwards the cell process's stderr from a reader thread, so a `?` error's message can
# reach the client after the cell has already reported idle (and nbclient then drops it: it
# only keeps output of the cell it is running). After every cell the runner writes this marker
# to the same stderr and reads the kernel's output until the marker comes back: one pipe keeps
# order, so everything the cell wrote is in by then.
BARRIER = "__transferlab_cell_done__"


def problems_in(cell):
    found = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            found.append(f"{out.get('ename')}: {out.get('evalue')}")
        elif out.get("output_type") == "stream":
            text = out.get("text", "")
            if out.get("name") == "stderr" and text.strip():
                found.append(f"stderr: {text.strip().splitlines()[0]}")
                continue
            m = FAILURE.search(text)
            if m:
                line = text[text.rfind("\n", 0, m.start()) + 1:].split("\n", 1)[0]
                found.append(f"{out.get('name')}: {line.strip()}")
    return found


def late_output(client, timeout=180.0):
    """Problems in what the kernel sends between a cell's idle and the barrier's marker."""
    kc = client.kc
    msg_id = kc.execute(f'eprintln!("{BARRIER}");', store_history=False)
    found, marker, idle = [], False, False
    deadline = time.time() + timeout
    while not (marker and idle):
        left = deadline - time.time()
        if left <= 0:
            found.append("the kernel did not finish the end-of-cell barrier; output may be lost")
            break
        try:
            msg = run_sync(kc.get_iopub_msg)(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            text = content.get("text", "")
            if BARRIER in text:
                marker = True
                text = text.replace(BARRIER, "")
            if content.get("name") == "stderr" and text.strip():
                found.append(f"stderr: {text.strip().splitlines()[0]}")
            elif FAILURE.search(text):
                found.append(f"{content.get('name')}: {text.strip().splitlines()[0]}")
        elif kind == "error":
            found.append(f"{content.get('ename')}: {content.get('evalue')}")
        elif kind == "status" and content.get("execution_state") == "idle" and msg["parent_header"].get("msg_id") == msg_id:
            idle = True
    try:
        run_sync(kc.get_shell_msg)(timeout=5)
    except queue.Empty:
        pass
    return found


def show(cell):
    """Print what a reader would see of a cell's text output (progress lines excepted)."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            text = "".join(l for l in out.get("text", "").splitlines(True) if not l.startswith("train "))
        elif out.get("output_type") in ("execute_result", "display_data"):
            text = out.get("data", {}).get("text/plain", "")
        else:
            continue
        if text.strip():
            print(text.rstrip(), flush=True)


def run(path, out_dir, timeout, verbose=False):
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(HEADLESS_SETUP))
    client = NotebookClient(
        nb,
        kernel_name="rust",
        timeout=timeout,
        allow_errors=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    started = time.time()
    failures = []
    timings = []
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                t0 = time.time()
                client.execute_cell(cell, index)
                timings.append(time.time() - t0)
                if verbose:
                    show(cell)
                for p in problems_in(cell) + late_output(client):
                    failures.append(f"cell {index}: {p}")
                if failures:
                    break
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        failures.append(f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
    nb.cells.pop(0)
    elapsed = time.time() - started
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / path.name
        tmp = target.with_suffix(".ipynb.tmp")
        nbformat.write(nb, tmp)
        tmp.replace(target)
    return failures, elapsed, timings


def report(path, failures, elapsed, timings):
    cells = ", ".join(f"{t:.1f}" for t in timings)
    status = "FAILED" if failures else "ok"
    print(f"{path.name}: {status} in {elapsed:.1f}s (cell seconds: {cells})", flush=True)
    # A panic's backtrace arrives as many stderr chunks: the first lines say what happened.
    for f in failures[:6]:
        print(f"  {f}", flush=True)
    if len(failures) > 6:
        print(f"  ... and {len(failures) - 6} more lines", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("notebooks", nargs="+", type=pathlib.Path)
    ap.add_argument("--out", type=pathlib.Path)
    ap.add_argument("--show", action="store_true", help="print the cells' text output")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    ap.add_argument("--jobs", type=int, default=1, help="notebooks run at once, each in its own kernel")
    ap.add_argument("--expect-failure", action="store_true", help="succeed only if every notebook fails")
    args = ap.parse_args()
    paths = [p.resolve() for p in args.notebooks]
    results = {}
    if args.jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(run, p, args.out, args.timeout, args.show): p for p in sorted(paths, key=lambda p: p.name, reverse=True)}
            for done in concurrent.futures.as_completed(futures):
                path = futures[done]
                try:
                    results[path] = done.result()
                except Exception as e:  # a worker that died is that notebook's failure
                    results[path] = ([f"runner: {type(e).__name__}: {e}"], 0.0, [])
                report(path, *results[path])
    else:
        for path in paths:
            results[path] = run(path, args.out, args.timeout, args.show)
            report(path, *results[path])
    bad = sum(1 for p in paths if bool(results[p][0]) != args.expect_failure)
    ran = len(paths)
    if args.expect_failure:
        print(f"{ran - bad} passed, {bad} failed (notebooks that had to fail)")
    else:
        print(f"{ran - bad} passed, {bad} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
