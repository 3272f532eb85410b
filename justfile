# transferlab tasks. `just demo` and `just test` are the two quick-start commands.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Train a clean and a BadNets-poisoned ConvNet on the embedded digits; print CA/ASR, write figures/.
demo:
    cargo run --bin tlab -- demo --out figures

# The whole test suite: unit, integration and documentation tests.
test:
    cargo test --all-targets --no-fail-fast
    cargo test --doc

# The BadNets CNN on the real MNIST test set (8,000 train / 2,000 test); needs ../shared/data.
mnist:
    cargo run --bin tlab -- train --model badnets-cnn --epochs 15 --batch-size 64 --lr 0.05 \
        --data idx:../shared/data/mnist-t10k/t10k-images-idx3-ubyte.gz,../shared/data/mnist-t10k/t10k-labels-idx1-ubyte.gz \
        --test-fraction 0.2 --out runs/mnist-badnets-cnn.safetensors
