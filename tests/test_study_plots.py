"""Plots: every axis of the FIM curves labelled; log axes clipped at an outlier, and saying so."""
import numpy as np

from fim_attention.study.plots import _log_axis, plot_fim_curves
from fim_attention.study.summary import summarize


def test_fim_curves_label_every_axis(study_smoke):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out, _ = study_smoke
    fig = plot_fim_curves(summarize(out))
    shown = [ax for ax in fig.axes if ax.axison]
    assert shown and all(ax.get_ylabel() for ax in shown)
    for j in range(4):  # each column's lowest shown panel names the step axis (the reference has no eff_rank row)
        col = [ax for ax in fig.axes[j::4] if ax.axison]
        assert col[-1].get_xlabel() == "step", j
    plt.close(fig)

def test_log_axis_clips_an_outlier_and_says_so():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    v = np.r_[np.geomspace(1.0, 10.0, 99), 1e12]  # one cond-like outlier
    ax.plot(np.arange(100), v)
    assert _log_axis(ax, [v]) and ax.get_ylim()[1] < 100
    assert "clipped to 1–99th percentile (1 of 100 values outside)" in ax.get_legend().get_texts()[0].get_text()
    fig2, ax2 = plt.subplots()
    assert not _log_axis(ax2, [np.geomspace(1.0, 10.0, 100)]) and ax2.get_legend() is None and ax2.get_yscale() == "log"
    plt.close(fig); plt.close(fig2)
