# transferlab tasks. `just demo` and `just test` are the two quick-start commands.

set shell := ["bash", "-euo", "pipefail", "-c"]

evcxr_version := "0.22.0"
venv := justfile_directory() / ".venv"
# Our kernel spec first, before any `rust` kernel a user registered elsewhere.
export JUPYTER_PATH := venv / "share/jupyter"
export PATH := env("HOME") / ".cargo/bin:" + env("PATH")

# Run the quickstart notebook headless: a BadNets attack and a fine-tuning defence on the
# embedded digits; prints the CA/ASR table and writes notebooks/figures/ and runs/notebooks/.
demo: notebook-env
    {{venv}}/bin/python tests/notebooks/run_notebooks.py --show --out runs/notebooks notebooks/00_quickstart.ipynb
    @echo "figures: notebooks/figures/quickstart_metrics.png (.svg); executed notebook: runs/notebooks/00_quickstart.ipynb"

tlab := env("CARGO_TARGET_DIR", justfile_directory() / "target") / "debug/tlab"
# CIFAR-10 by its hub id, offline: ../shared/data/cifar10-jpeg served as `uoft-cs/cifar10`.
with_cifar := "tests/with_cifar_hub.sh " + tlab

# The whole test suite: unit, integration and documentation tests, then every notebook headless.
test:
    #!/usr/bin/env bash
    set -euo pipefail
    # The notebook kernel's set-up (evcxr_jupyter from source, ~9 min cold; the kernel's first
    # build of the dependency tree, as dylibs that cargo's own build cannot share, ~13 min)
    # runs beside the Rust build and tests: on 2 cores each fills the cores while the other
    # links or compiles one large crate alone.
    mkdir -p runs
    {{just_executable()}} notebook-env warm > runs/kernel-setup.log 2>&1 &
    kernel=$!
    status=0
    { cargo build --benches --bins --tests \
        && {{with_cifar}} tests/with_slurm.sh cargo test --lib --bins --tests --no-fail-fast \
        && cargo test --doc; } || status=$?
    if ! wait $kernel; then cat runs/kernel-setup.log >&2; echo "notebook kernel set-up failed (log above)" >&2; exit 1; fi
    [ $status -eq 0 ] || exit $status
    # Two kernels at once: each fresh kernel's one-core start-up overlaps the other's work.
    {{with_cifar}} {{venv}}/bin/python tests/notebooks/run_notebooks.py --jobs 2 --out runs/notebooks notebooks/*.ipynb tests/notebooks/model_across_cells.ipynb
    {{venv}}/bin/python tests/notebooks/run_notebooks.py --expect-failure tests/notebooks/broken_*.ipynb

# Set up the notebook environment and open JupyterLab on notebooks/.
lab: notebook-env warm
    {{venv}}/bin/jupyter lab --notebook-dir notebooks $([ "$(id -u)" = 0 ] && echo --allow-root)

# Install evcxr_jupyter (pinned), Jupyter in a project venv (pinned), register the `rust`
# kernel. Idempotent: a second run only checks.
notebook-env:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! cargo install --list | grep -q "^evcxr_jupyter v{{evcxr_version}}:"; then
        cargo install --locked evcxr_jupyter --version {{evcxr_version}}
    fi
    if [ ! -x "{{venv}}/bin/python" ]; then python3 -m venv "{{venv}}"; fi
    if ! cmp -s notebooks/kernel/requirements.txt "{{venv}}/.requirements.txt"; then
        "{{venv}}/bin/pip" install --quiet --disable-pip-version-check -r notebooks/kernel/requirements.txt
        cp notebooks/kernel/requirements.txt "{{venv}}/.requirements.txt"
    fi
    "{{venv}}/bin/python" notebooks/kernel/install_kernel.py "{{venv}}" "$(command -v evcxr_jupyter)" >/dev/null

# Compile the crate once in the notebook kernel so the first cell of a fresh kernel is quick.
# Kernels that run at once build in separate slots (notebooks/kernel/launch.sh); evcxr's cache
# skips the registry crates but not transferlab itself, so a second slot would compile the
# crate again (220-245 s in CI). A copy of the warmed build makes cargo find it fresh instead;
# if the copy fails (a full disk), that slot only compiles on its own, as before.
warm: notebook-env
    {{venv}}/bin/python tests/notebooks/run_notebooks.py notebooks/kernel/warm.ipynb
    notebooks/kernel/seed_slots.sh 1 || echo "warning: kernel slot 1 not seeded; its first notebook compiles the crate itself" >&2

# The BadNets CNN on the real MNIST test set (8,000 train / 2,000 test); needs ../shared/data.
mnist:
    cargo run --bin tlab -- train --model badnets-cnn --epochs 15 --batch-size 64 --lr 0.05 \
        --data idx:../shared/data/mnist-t10k/t10k-images-idx3-ubyte.gz,../shared/data/mnist-t10k/t10k-labels-idx1-ubyte.gz \
        --test-fraction 0.2 --out runs/mnist-badnets-cnn.safetensors

# BackdoorBench's CIFAR-10 setting (a benchmark, hours on 2 cores): BadNets and Blended on
# CIFAR-10 (by hub id; ../shared/data/cifar10-jpeg served offline), ResNet-20, then FT, FP, NC,
# CLP, FST and ABL (more with --defences). Resumable: rerun after a kill. Results in
# runs/backdoorbench, copied with the command and its wall time to benches/results/backdoorbench/.
backdoorbench *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --bin tlab
    start=$(date +%s)
    {{with_cifar}} {{tlab}} backdoorbench --out runs/backdoorbench {{ARGS}}
    end=$(date +%s)
    mkdir -p benches/results/backdoorbench
    cp runs/backdoorbench/table.csv runs/backdoorbench/table.parquet runs/backdoorbench/*.png benches/results/backdoorbench/
    echo "just backdoorbench {{ARGS}}: this invocation $((end - start)) s (a resumed run adds to earlier ones; per-cell seconds are in the table)" >> benches/results/backdoorbench/RUNS.txt

# Training and inference speed and peak memory against PyTorch CPU (pip, in .venv-bench),
# interleaved A/B, median of 5 rounds; then images/s against batch (32/128/256) and threads
# (1, 2) for the thin-channel networks, and the real-scale measurements. Built with the dev profile the tests and the CLI use
# (dependencies at opt-level 3), so it needs no second, release build of candle and polars.
bench:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x .venv-bench/bin/python ]; then python3 -m venv .venv-bench; fi
    .venv-bench/bin/python -c "import torch" 2>/dev/null || .venv-bench/bin/pip install --quiet torch==2.15.0
    bin=$(cargo bench --profile dev --no-run --bench throughput --message-format=json \
        | python3 -c 'import json,sys; m=[json.loads(l) for l in sys.stdin]; print([j["executable"] for j in m if j.get("executable") and j["target"]["name"] == "throughput"][-1])')
    .venv-bench/bin/python benches/compare.py "$bin" .venv-bench/bin/python

# Our ResNet-18/50 and BiT ResNetV2 against timm (CPU torch in .venv-crosscheck), writing
# tests/fixtures/crosscheck/*.json, and the hub cache shared with Python's huggingface_hub
# checked both ways against a loopback hub.
crosscheck:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x .venv-crosscheck/bin/python ]; then python3 -m venv .venv-crosscheck; fi
    .venv-crosscheck/bin/python -c "import torch, timm, transformers, huggingface_hub, safetensors" 2>/dev/null || \
        .venv-crosscheck/bin/pip install --quiet torch==2.15.0 timm==1.0.31 transformers==5.24.0 huggingface_hub==2.4.0 safetensors==0.8.0
    cargo build --bin tlab
    .venv-crosscheck/bin/python tests/crosscheck/crosscheck.py --tlab "${CARGO_TARGET_DIR:-target}/debug/tlab"
    cargo test --test suite hub_crosscheck:: -- --nocapture
