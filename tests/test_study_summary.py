"""From logs to numbers: the smoke study's summary, metrics from stored spectra, ranks."""
import numpy as np
import torch

from fim_attention.study.spectra import layer_spectra
from fim_attention.study.summary import _rank_at, _spectrum_metrics, summarize
from study_common import _causal_probs


def test_smoke_study_summary(study_smoke):
    out, _ = study_smoke
    s = summarize(out)
    a, b = s["runs"]["standard_s0"], s["runs"]["ra_mla_kvsplice_s0"]
    assert a["finished"] and b["finished"] and b["reversed_layers"] == [1] and a["reversed_layers"] == []
    assert b["kv_bytes_per_token"] < a["kv_bytes_per_token"]
    assert len(a["fim"]["step"]) == len(a["fim"]["ref_step"]) == 3
    for d in ("query", "mean", "ref", "all"):
        v = np.array(a["fim"][d]["eigmax"], dtype=float)  # (steps, L)
        assert v.shape == (3, 2) and np.isfinite(v).all() and (v > 0).all() and (v <= 0.5 + 1e-6).all()  # eigmax <= 1/2
    cf = np.array(a["spectra"]["meanfim_cumfrac"], dtype=float)
    assert np.all(np.diff(cf, axis=-1) >= -1e-4) and np.allclose(cf[:, -1], 1, atol=1e-4)

def test_spectrum_metrics_match_fim_metrics():
    "The all-rows metrics computed from stored spectra agree with the engine's fim_metrics on the same mean FIM."
    from fim_attention.metrics import fim_metrics
    p = _causal_probs(2, 3, 20, 4).double()
    p = p / p.sum(-1, keepdim=True)
    rows = p.transpose(0, 1).reshape(3, 40, 20)  # (H, N, T)
    lam = layer_spectra(p.float(), 8, torch.Generator().manual_seed(0))["meanfim_eig"].numpy()[None]  # (1, H, T)
    mine = _spectrum_metrics(lam)
    ref = fim_metrics(rows, mode="mean")
    for k in ("eigmax", "trace", "energy_r8", "energy_r16", "eff_rank"):
        assert np.isclose(mine[k][0], ref[k].double().mean().item(), rtol=1e-6), k

def test_rank_at():
    assert _rank_at(np.array([0.5, 0.89, 0.9, 1.0])) == 3 and _rank_at(np.array([0.95, 1.0])) == 1
    assert np.isnan(_rank_at(np.array([np.nan, np.nan])))
