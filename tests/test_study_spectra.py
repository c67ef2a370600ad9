"""layer_spectra against the float64 oracle and the reference sample; the SpectrumProbe leaves training alone."""
import numpy as np
import pytest
import torch

from fim_attention.metrics import reference_metrics
from fim_attention.oracle import scipy_eigvalsh, scipy_mean_fim_eigvalsh
from fim_attention.study.recipe import train_config
from fim_attention.study.spectra import SpectrumProbe, layer_spectra
from fim_attention.training import read_log, train
from study_common import TINY, _causal_probs


@pytest.mark.parametrize("B,H,T,seed", [(2, 3, 24, 0), (1, 2, 40, 1), (3, 1, 9, 2)])
def test_layer_spectra_matches_oracle(B, H, T, seed):
    p = _causal_probs(B, H, T, seed)
    p64 = p.double() / p.double().sum(-1, keepdim=True)
    out = layer_spectra(p, n_rows=B * T, generator=torch.Generator().manual_seed(0))  # every row taken
    oracle = scipy_mean_fim_eigvalsh(p64.transpose(0, 1).reshape(H, B * T, T))
    assert np.allclose(out["meanfim_eig"].numpy(), oracle, rtol=0, atol=1e-12)
    assert np.allclose(out["ref_eig"].numpy(), oracle, rtol=0, atol=2e-6)  # float32 dense path, same rows
    q = np.nanmean(scipy_eigvalsh(p64).transpose(1, 0, 2, 3).reshape(H, B * T, T), 1)
    assert np.allclose(out["query_eig"].numpy(), q, rtol=0, atol=1e-12)
    cf = out["query_cumfrac"].numpy()
    assert np.all(np.diff(cf, axis=-1) >= -1e-12) and np.allclose(cf[:, -1], 1)

def test_layer_spectra_reproduces_reference_sample():
    p = _causal_probs(2, 2, 32, 5)
    out = layer_spectra(p, n_rows=16, generator=torch.Generator().manual_seed(9))
    ref = reference_metrics(p, n_samples=16, generator=torch.Generator().manual_seed(9), return_eigvals=True)
    assert torch.equal(out["ref_eigmax"], ref["eigmax"]) and torch.equal(out["ref_energy_r16"], ref["energy_r16"])

def test_layer_spectra_draws_its_rows_as_before():
    "Regression (stored study): the per-query rows, now chosen by probe.Rows, are the draw the study's runs used."
    from fim_attention.spectrum import fim_eigvalsh
    p = _causal_probs(3, 2, 20, 5)
    B, H, T, _ = p.shape
    out = layer_spectra(p, 16, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    reference_metrics(p.float(), n_samples=16, generator=g)  # the reference sample comes first from the same generator
    pick = torch.rand(H, B * T, generator=g).argsort(-1)[:, :16]  # the old code's draw
    rows = p.double().transpose(0, 1).reshape(H, B * T, T)
    lam = fim_eigvalsh(rows.gather(1, pick[..., None].expand(H, 16, T)), normalize=True)
    assert torch.equal(out["query_eig"], lam.nanmean(1))

def test_probe_does_not_change_training(tmp_path):
    "The SpectrumProbe has its own generator: training with and without it gives the same losses."
    cfgs = [train_config("ra_mla", 0, TINY, tmp_path / k) for k in ("with", "without")]
    train(cfgs[0], callbacks=[SpectrumProbe(1, 2, 8)])
    train(cfgs[1])
    la = [r["train/loss"] for r in read_log(tmp_path / "with" / "ra_mla_s0", "train")]
    lb = [r["train/loss"] for r in read_log(tmp_path / "without" / "ra_mla_s0", "train")]
    assert la == lb and len(la) >= 1
    assert len(read_log(tmp_path / "with" / "ra_mla_s0", "spectra")) == 5
