"""Seeded generators of attention-distribution families that stress an FIM eigensolver.

`make_family(name, batch, T, dtype, seed)` returns a `(batch, T)` tensor whose rows are
probability vectors. Rows are built in float64 (numpy Generator, fixed seed) and cast to
`dtype` at the end, so a float32 family is "the float32 rounding of a float64 family"
(rows then sum to 1 only within float32 rounding, as real float32 softmax output does).
"""
import numpy as np
import torch

FAMILIES = (
    "dirichlet_0.05",   # heavy-tailed: entries spanning hundreds of decades, many exact zeros
    "dirichlet_1",      # uniform on the simplex
    "dirichlet_10",     # flat: clustered eigenvalues
    "peaked_0.9",       # one entry p_max, the rest Dirichlet(1) on 1 - p_max
    "peaked_0.999",
    "peaked_1-1e-6",    # float64 dense solvers lose the small eigenvalues here
    "ties",             # exact ties (values from {1, 2, 4} before normalising)
    "near_ties",        # pairs of entries 1e-10 apart (relative)
    "causal",           # row i of a causal softmax: zeros after a random position
    "sink_uniform",     # attention sink + uniform rest: one tie of multiplicity T-1
    "uniform",          # all 1/T: every nonzero eigenvalue equal
    "saturated",        # softmax of large scores: entries down to subnormal and exact 0
)

PEAKS = {"peaked_0.9": 0.9, "peaked_0.999": 0.999, "peaked_1-1e-6": 1 - 1e-6}


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / x.sum(-1, keepdims=True)


def _dirichlet(rng, alpha, batch, T):
    g = rng.gamma(alpha, size=(batch, T))
    return _normalise(g)


def make_family(name: str,  # one of FAMILIES
                batch: int,  # number of rows
                T: int,  # row length, >= 2
                dtype: torch.dtype = torch.float64,  # output dtype (rows built in float64, then cast)
                seed: int = 0,  # numpy Generator seed
                ) -> torch.Tensor:  # (batch, T) rows of probabilities
    "Seeded `(batch, T)` probability rows of the named family."
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; choose from {FAMILIES}")
    if T < 2:
        raise ValueError("families need T >= 2")
    rng = np.random.default_rng([seed, T, batch, FAMILIES.index(name)])
    if name.startswith("dirichlet_"):
        p = _dirichlet(rng, float(name.split("_")[1]), batch, T)
    elif name in PEAKS:
        pmax = PEAKS[name]
        rest = _dirichlet(rng, 1.0, batch, T - 1) * (1 - pmax)
        p = np.concatenate([np.full((batch, 1), pmax), rest], -1)
        p = rng.permuted(p, axis=-1)
    elif name == "ties":
        p = _normalise(rng.choice([1.0, 2.0, 4.0], size=(batch, T)))
    elif name == "near_ties":
        base = _dirichlet(rng, 1.0, batch, T)
        base[:, 1::2] = base[:, 0:T - T % 2:2] * (1 + 1e-10)
        p = _normalise(base)
    elif name == "causal":
        p = np.zeros((batch, T))
        ends = rng.integers(1, T + 1, size=batch)   # number of visible keys per row
        for b, e in enumerate(ends):
            p[b, :e] = _dirichlet(rng, 1.0, 1, int(e))[0]
    elif name == "sink_uniform":
        s = rng.uniform(0.3, 0.99, size=(batch, 1))
        p = np.concatenate([s, np.broadcast_to((1 - s) / (T - 1), (batch, T - 1))], -1)
    elif name == "uniform":
        p = np.full((batch, T), 1.0 / T)
    elif name == "saturated":
        s = rng.standard_normal((batch, T)) * 60.0
        s = s - s.max(-1, keepdims=True)
        p = _normalise(np.exp(s))
    return torch.from_numpy(np.ascontiguousarray(p)).to(dtype)
