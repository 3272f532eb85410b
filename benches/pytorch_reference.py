"""The PyTorch CPU side of `just bench`: the same models, batch and optimiser as
benches/throughput.rs, one measurement per process, printed as JSON.

Usage: pytorch_reference.py MODEL MODE BATCH STEPS THREADS
"""
import json
import pathlib
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# The CIFAR models as the fixtures define them (one definition for both).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
from torch_models import BadNetsCnn, CifarResNet, PreActResNet18  # noqa: E402


class Cnn3(nn.Module):
    """3 x (3x3 conv, ReLU, 2x2 max-pool) at 32-64-128 channels, linear head."""

    def __init__(self, classes=10):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.c3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128 * 4 * 4, classes)

    def forward(self, x):
        for c in (self.c1, self.c2, self.c3):
            x = F.max_pool2d(F.relu(c(x)), 2)
        return self.fc(x.flatten(1))


MODELS = {"cnn3": (Cnn3, (3, 32, 32)), "resnet20": (lambda: CifarResNet(20, 10), (3, 32, 32)),
          "resnet56": (lambda: CifarResNet(56, 10), (3, 32, 32)), "badnets-cnn": (lambda: BadNetsCnn(1, 10, 28), (1, 28, 28)),
          "preact-resnet18": (lambda: PreActResNet18(10), (3, 32, 32))}


def main():
    name, mode, batch, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cls, shape = MODELS[name]
    model = cls()
    x = torch.rand(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        if mode == "train":
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        else:
            model.eval()
            with torch.no_grad():
                model(x)

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    secs = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images_per_s": batch * steps / secs, "peak_rss_mb": peak_mb}))


if __name__ == "__main__":
    main()
