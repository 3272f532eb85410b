"""The deterministic values both sides of a cross-check compute: Rust (tests/suite/common.rs,
`uniform`) and these scripts. A splitmix64-style hash of (name, index), so no RNG library or
version enters the comparison."""

import numpy as np

M64 = (1 << 64) - 1


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def uniform(name: str, n: int) -> np.ndarray:
    """n values in [-0.5, 0.5) from a splitmix64-style hash of (name, index)."""
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint64)
        x = i * np.uint64(0x9E3779B97F4A7C15) + np.uint64(fnv1a64(name))
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xFF51AFD7ED558CCD)
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xC4CEB9FE1A85EC53)
        x ^= x >> np.uint64(33)
    return (x >> np.uint64(40)).astype(np.float64) / float(1 << 24) - 0.5
