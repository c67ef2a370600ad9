"""What the tests of `fim_attention.study` share: a toy study's recipe, the stored flat recipe, causal attention rows,
synthetic summaries (the smoke study itself is the `study_smoke` fixture of conftest.py)."""
import math

import numpy as np
import torch

from fim_attention.model import GPTConfig
from fim_attention.study.recipe import AblationConfig, study_recipe

TINY = AblationConfig(study_recipe(max_steps=4, warmup_steps=1, batch_size=4, eval_interval=2, eval_windows=4,
                                  model=GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32), fim_interval=2,
                                  fim_batch_size=2, fim_rows=8, ckpt_interval=0), probe_rows=8)
OLD_RECIPE = {"steps": 2500, "batch_size": 16, "block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128, "lr": 0.006,
              "min_lr": 0.0006, "warmup_steps": None, "eval_interval": 100, "eval_windows": 128, "fim_interval": 250,
              "fim_batch_size": 4, "fim_rows": 64, "probe_rows": 64, "ckpt_interval": 250, "data": None}  # study.json before


def _causal_probs(B, H, T, seed, scale=2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, H, T, T, generator=g, dtype=torch.float64) * scale
    return torch.softmax(s + torch.triu(torch.full((T, T), -math.inf, dtype=torch.float64), 1), -1).to(dtype)


def _synthetic_summary(values: dict, key="val_loss", L=2):
    "A summary whose runs carry `values[variant][seed]` as `key` and as every FIM metric."
    runs = {}
    for v, by_seed in values.items():
        for s, x in by_seed.items():
            fim = {d: {m: [[x] * L] for m in ("eigmax", "energy_r16", "energy_r8", "trace")} for d in ("query", "mean", "ref", "all")}
            runs[f"{v}_s{s}"] = {"variant": v, "seed": s, "finished": True, key: x, "reversed_layers": [1] if "ra" in v else [],
                                 "fim": fim}
    return {"runs": runs, "study": None}


def _power(n, l_inf=1.30, a=40.0, alpha=0.6):
    return l_inf + a * np.asarray(n, dtype=np.float64) ** -alpha


def _budget_study(steps, l_inf, seeds=(0,), lr=6e-3, train_s=0.15):
    runs = {}
    for v, li in l_inf.items():
        for s in seeds:
            runs[f"{v}_s{s}"] = {"variant": v, "seed": s, "steps": steps, "finished": True, "train_s": train_s * steps,
                                 "val_loss": float(_power(steps, li)) + 0.002 * s}
    cfg = {"steps": steps, "lr": lr, "eval_interval": 100 if steps > 2000 else 50, "warmup_steps": None, "n_embd": 128}
    return {"study": {"config": cfg}, "runs": runs}
