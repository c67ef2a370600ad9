"""Training loop: exact resume, signals, DDP, callback isolation, logging keys, bad inputs."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fim_attention.data import load_corpus
from fim_attention.metrics import METRIC_NAMES, fim_metrics
from fim_attention.model import GPTConfig
from fim_attention.training import (RUNTIME_FIELDS, Callback, CheckpointError, FisherMetricsCallback, RunExistsError,
                                    TrainConfig, Trainer, load_checkpoint, lr_at, read_log, save_checkpoint, train)

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
# fields that legitimately differ between two runs of the same trajectory
VOLATILE = {"time", "train/tokens_per_s", "fim_seconds", "elapsed_s", "train_s", "tokens_per_s_mean"}


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(block_size=32)


def tiny(tmp_path, name="run", model=None, **kw):
    base = dict(model=GPTConfig(**{**TINY, **(model or {})}), max_steps=12, batch_size=8, warmup_steps=3,
                eval_interval=4, eval_windows=16, log_interval=1, ckpt_interval=0, fim_interval=4,
                fim_batch_size=2, fim_rows=16, out_dir=str(tmp_path / name), progress=False, tensorboard=False)
    return TrainConfig(**{**base, **kw})


def trajectory(out_dir):
    "The log without bookkeeping events and timing fields: what an uninterrupted run must reproduce."
    recs = [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_log(out_dir)
            if r["event"] not in ("checkpoint", "interrupt", "resume", "end")]
    for r in recs:
        if r["event"] == "config": r["config"] = {k: v for k, v in r["config"].items() if k not in RUNTIME_FIELDS}
    return recs


def losses(out_dir, key="train/loss"):
    return {r["step"]: r[key] for r in read_log(out_dir) if key in r}


class StopAt(Callback):
    def __init__(self, step): self.at = step
    def on_step_end(self, trainer):
        if trainer.step == self.at: trainer.should_stop = True


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p])
    return e


def test_lr_schedule():
    c = TrainConfig(max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    lrs = [lr_at(s, c) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[100] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # monotone after warm-up


def test_resume_is_exact(tmp_path, corpus):
    # dropout on, so the restored torch RNG stream matters; the callback's window is in the checkpoint too
    full = train(tiny(tmp_path, "full", model=dict(dropout=0.1)), corpus=corpus)
    part = train(tiny(tmp_path, "part", model=dict(dropout=0.1)), callbacks=[StopAt(6)], corpus=corpus)
    assert part["stopped"] and part["step"] == 6
    assert load_checkpoint(tmp_path / "part" / "ckpt.pt")["step"] == 6
    rest = train(tiny(tmp_path, "part", model=dict(dropout=0.1), resume=True), corpus=corpus)
    assert rest["step"] == 12 and not rest["stopped"]
    a, b = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert sorted(b) == list(range(1, 13))
    assert all(a[s] == b[s] for s in range(7, 13)), {s: (a[s], b[s]) for s in range(7, 13)}  # bit for bit
    assert rest["val/loss"] == full["val/loss"]
    # the resumed log reads like the uninterrupted one (records after the checkpoint were cut back)
    assert trajectory(tmp_path / "full") == trajectory(tmp_path / "part")
    sd_full = load_checkpoint(tmp_path / "full" / "ckpt.pt")["model"]
    sd_part = load_checkpoint(tmp_path / "part" / "ckpt.pt")["model"]
    assert all(torch.equal(sd_full[k], sd_part[k]) for k in sd_full)


class Crash(Callback):
    def on_step_end(self, trainer):
        if trainer.step == 7: raise RuntimeError("simulated crash")


def test_crash_then_resume_cuts_the_logs_back(tmp_path, corpus):
    # a hard failure after the step-4 checkpoint: log.jsonl and TensorBoard already hold steps 5-7
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train(tiny(tmp_path, "full", tensorboard=True), corpus=corpus)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny(tmp_path, "crash", ckpt_interval=4, tensorboard=True), callbacks=[Crash()], corpus=corpus)
    assert max(losses(tmp_path / "crash")) == 7 and load_checkpoint(tmp_path / "crash" / "ckpt.pt")["step"] == 4
    train(tiny(tmp_path, "crash", ckpt_interval=4, tensorboard=True, resume=True), corpus=corpus)
    assert trajectory(tmp_path / "full") == trajectory(tmp_path / "crash")
    acc = EventAccumulator(str(tmp_path / "crash" / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    ref = EventAccumulator(str(tmp_path / "full" / "tb"), size_guidance={"scalars": 0})
    ref.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert got == [(e.step, e.value) for e in ref.Scalars("train/loss")] and [s for s, _ in got] == list(range(1, 13))


def test_callback_does_not_touch_training_rng(tmp_path, corpus):
    with_cb = train(tiny(tmp_path, "cb", model=dict(dropout=0.1), fim_interval=2), corpus=corpus)
    without = train(tiny(tmp_path, "nocb", model=dict(dropout=0.1), fim_interval=0), corpus=corpus)
    assert losses(tmp_path / "cb") == losses(tmp_path / "nocb")
    assert with_cb["val/loss"] == without["val/loss"]
    steps = [r["step"] for r in read_log(tmp_path / "cb", "fisher")]
    assert steps == [0, 2, 4, 6, 8, 10, 12] and not read_log(tmp_path / "nocb", "fisher")


def test_logging_keys_jsonl_and_tensorboard(tmp_path, corpus):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = tiny(tmp_path, "keys", model=dict(attn="ra", n_layer=2), max_steps=4, tensorboard=True)
    train(cfg, corpus=corpus)
    rec = read_log(tmp_path / "keys", "fisher")[-1]
    assert rec["reversed_layers"] == [1]
    L, H = 2, 2
    for prefix, names in (("fisher", METRIC_NAMES), ("fisher_meanfim", METRIC_NAMES),
                          ("fisher_reference", ("eigmax", "trace", "cond", "energy_r8", "energy_r16"))):
        for m in names:
            for l in range(L):
                for h in range(H):
                    assert f"{prefix}/layer{l}/head{h}/{m}" in rec
                assert f"{prefix}/layer{l}/{m}_mean" in rec and f"{prefix}/layer{l}/{m}_std" in rec
            assert f"{prefix}/{m}_global_mean" in rec
            assert f"{prefix}/reversed_layers/{m}_mean" in rec and f"{prefix}/standard_layers/{m}_mean" in rec
    assert any(k.endswith("_last100") for k in rec)
    assert rec["fisher/layer1/eigmax_mean"] == pytest.approx(
        (rec["fisher/layer1/head0/eigmax"] + rec["fisher/layer1/head1/eigmax"]) / 2, rel=1e-6)
    assert rec["fisher/reversed_layers/trace_mean"] == pytest.approx(rec["fisher/layer1/trace_mean"], rel=1e-6)
    ev = read_log(tmp_path / "keys", "eval")[-1]
    assert ev["val/bpb"] == pytest.approx(ev["val/loss"] / torch.log(torch.tensor(2.0)).item())
    acc = EventAccumulator(str(tmp_path / "keys" / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "val/bpb", "fisher/layer0/head1/eigmax",
            "fisher/eigmax_global_mean", "fisher_meanfim/layer1/energy_r16_std"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]


def test_callback_measures_what_the_model_multiplies(corpus):
    from fim_attention.model import GPT
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, dropout=0.2))
    model.train()
    cb = FisherMetricsCallback(interval=1, batch_size=2, n_rows=2 * 32)  # n_rows = every row: no sampling
    cb.set_batch(corpus.val, 32)
    ph = cb.per_head(model, step=5)
    assert model.training  # train mode restored
    model.eval()
    with torch.no_grad():
        _, _, probs = model(cb.batch, capture=True)
    for l, p in enumerate(probs):
        q = fim_metrics(p, mode="query")
        for k in ("eigmax", "trace", "energy_r16", "eff_rank"):
            v = q[k]  # (B, H, T); row 0 of each sequence has a zero FIM
            want = torch.stack([v[:, h][torch.isfinite(v[:, h])].double().mean() for h in range(2)])
            torch.testing.assert_close(ph["query"][k][l], want)
        for k in ("decay", "cond"):  # the probe's rule for the heavy-tailed ratios: median, +inf kept, NaN left out
            v = q[k]  # regression: the callback used to take a finite mean, silently dropping the +inf rows
            want = torch.stack([v[:, h].flatten().nanmedian() for h in range(2)]).double()
            torch.testing.assert_close(ph["query"][k][l], want)
        assert torch.isinf(q["decay"]).any()  # rows with support < 6: decay = +inf, counted by the median
        mean = fim_metrics(p.transpose(0, 1).reshape(2, 64, 32), mode="mean")  # all rows per head
        for k in ("eigmax", "trace", "energy_r8", "eff_rank"):
            torch.testing.assert_close(ph["mean"][k][l], mean[k].double(), rtol=1e-5, atol=1e-6)
    assert torch.equal(cb.per_head(model, 5)["query"]["eigmax"], ph["query"]["eigmax"])  # eval mode: deterministic
    # with sampling active, the mean-FIM and the reference definition see the same rows: their
    # eigmax agree to float32 accuracy, while another step's sample gives visibly different values
    sub = FisherMetricsCallback(interval=1, batch_size=2, n_rows=8)
    sub.batch = cb.batch
    a, b = sub.per_head(model, 3), sub.per_head(model, 4)
    torch.testing.assert_close(a["mean"]["eigmax"], a["reference"]["eigmax"].double().to(a["mean"]["eigmax"].dtype),
                               rtol=1e-4, atol=1e-6)
    assert not torch.allclose(a["mean"]["eigmax"], b["mean"]["eigmax"], rtol=1e-3)
    assert torch.equal(a["query"]["eigmax"], b["query"]["eigmax"])  # per-query: no sampling
    # the fixed batch is real validation text
    val = bytes(corpus.val.tolist())
    assert all(bytes(row.tolist()) in val for row in cb.batch)


def test_callback_without_full_spectrum_drops_only_those_metrics(tmp_path, corpus):
    "full_spectrum=False: no eff_rank (any mode) and no mean-FIM cond; every other key logged, with the full run's value."
    from fim_attention.model import GPT
    from fim_attention.probe import full_spectrum_metrics
    from fim_attention.training import _PREFIXES
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    full, top = (FisherMetricsCallback(batch_size=2, n_rows=16, full_spectrum=f) for f in (True, False))
    full.set_batch(corpus.val, 32); top.batch = full.batch
    a, b = full.measure(model, 3), top.measure(model, 3)
    def dropped(k):
        mode = {p: m for m, p in _PREFIXES.items()}[k.split("/")[0]]
        return any(f"/{m}" in k for m in full_spectrum_metrics(mode))
    assert set(b) == {k for k in a if not dropped(k)} and any(dropped(k) for k in a)
    assert any(k.startswith("fisher_meanfim/") and "/cond" in k for k in a if dropped(k))   # the mean FIM's cond goes
    assert any(k.startswith("fisher/") and "/cond" in k for k in b)                         # the per-query cond stays
    for k in b:  # the top-16 path and the full spectrum agree on everything both compute
        assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12, nan_ok=True), k
    # a resumed run that switches it off: the rolling means of the keys it no longer measures stay out of the log
    top.load_state_dict(full.state_dict())
    c = top.measure(model, 4)
    assert set(c) == set(b) and not any("eff_rank" in k for k in c)
    # the Trainer's flag reaches the callback; a resume may change it (it does not touch the trajectory)
    assert "fim_full_spectrum" in RUNTIME_FIELDS
    t = Trainer(tiny(tmp_path, "top", fim_full_spectrum=False), corpus=corpus)
    assert next(c for c in t.callbacks if isinstance(c, FisherMetricsCallback)).full_spectrum is False
    t.logger.close()
    for bad in (0, "no", None):
        with pytest.raises(ValueError, match="full_spectrum must be True or False"):
            TrainConfig(fim_full_spectrum=bad)
        with pytest.raises(ValueError, match="full_spectrum must be True or False"):
            FisherMetricsCallback(full_spectrum=bad)


def test_bad_inputs_leave_nothing_behind(tmp_path, corpus):
    short = tmp_path / "short.txt"
    short.write_text("too short for a context\n")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="too short"):
        train(tiny(tmp_path, "never", data=str(short)))
    assert not out.exists()
    with pytest.raises(ValueError, match="divisible"):
        train(tiny(tmp_path, "never", batch_size=6, grad_accum_steps=4), corpus=corpus)
    assert not out.exists()
    with pytest.raises(FileNotFoundError):
        train(tiny(tmp_path, "never", resume=str(tmp_path / "missing.pt")), corpus=corpus)
    assert not out.exists()
    with pytest.raises(ValueError):
        TrainConfig(max_steps=0)

    # a checkpoint from another config: error names the field; the run folder is untouched
    train(tiny(tmp_path, "a", max_steps=2), corpus=corpus)
    log_before = (tmp_path / "a" / "log.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match=r"model.n_embd: checkpoint 32 != config 64"):
        train(tiny(tmp_path, "a", max_steps=2, model=dict(n_embd=64), resume=True), corpus=corpus)
    with pytest.raises(CheckpointError, match=r"lr: checkpoint 0.001 != config 0.002"):
        train(tiny(tmp_path, "a", max_steps=2, lr=2e-3, resume=True), corpus=corpus)
    other = load_corpus(ROOT / "tests" / "test_data.py", block_size=32, pattern="*")
    with pytest.raises(CheckpointError, match="other data"):
        train(tiny(tmp_path, "a", max_steps=2, resume=True), corpus=other)
    assert (tmp_path / "a" / "log.jsonl").read_bytes() == log_before

    # a corrupt (truncated) checkpoint
    ck = tmp_path / "a" / "ckpt.pt"
    ck.write_bytes(ck.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="corrupt"):
        train(tiny(tmp_path, "a", max_steps=2, resume=True), corpus=corpus)
    assert (tmp_path / "a" / "log.jsonl").read_bytes() == log_before
    ck.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(ck)


def test_failed_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    p = tmp_path / "ckpt.pt"
    save_checkpoint({"format": "x", "v": torch.ones(3)}, p)
    good = p.read_bytes()

    def broken(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": "x", "v": torch.zeros(3)}, p)
    assert p.read_bytes() == good and sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


# A training process without any command line: train(TrainConfig(**json)), print the summary, exit 128 + signal
# when interrupted (what `fim-attention train` does on top of the same contract). Also the script torchrun starts.
RUNNER = """
import json, signal, sys
from fim_attention.training import TrainConfig, train
res = train(TrainConfig(**json.loads(sys.argv[1])))
print(json.dumps({k: res[k] for k in ("step", "interrupted", "stopped", "checkpoint", "out_dir")}))
sys.exit(128 + signal.Signals[res["interrupted"]] if res["interrupted"] else 0)
"""


def runner_cmd(tmp_path, **cfg):
    script = tmp_path / "run_train.py"
    script.write_text(RUNNER)
    base = dict(model=TINY, batch_size=8, eval_windows=16, fim_batch_size=2, fim_rows=16, progress=False,
                tensorboard=False, log_interval=1, ckpt_interval=0)
    return [str(script), json.dumps({**base, **cfg})]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_final_checkpoint(tmp_path, sig):
    out = tmp_path / "sig"
    proc = subprocess.Popen([sys.executable, *runner_cmd(tmp_path, max_steps=100000, eval_interval=50, fim_interval=20,
                                                         out_dir=str(out))],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = out / "log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and sum(1 for line in log.read_text().splitlines() if '"event": "train"' in line) >= 5: break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    proc.send_signal(sig)
    res, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err.decode()[-2000:]
    res = json.loads(res)  # the interrupt contract: fit() returned (no exception) with the signal's name
    recs = read_log(out)  # every line is complete JSON
    last_train = [r for r in recs if r["event"] == "train"][-1]["step"]
    assert res["interrupted"] == signal.Signals(sig).name and res["stopped"] and res["step"] == last_train
    assert recs[-1]["event"] == "interrupt" and recs[-1]["signal"] == signal.Signals(sig).name
    assert not recs[-1]["requested_by_callback"] and "resume=True" in recs[-1]["how_to_resume"]
    assert not [r for r in recs if r["event"] == "end"]  # nothing says an unfinished run ended
    st = load_checkpoint(out / "ckpt.pt")
    assert st["step"] == last_train == recs[-1]["step"]
    assert st["sampler"]["step"] == last_train
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "log.jsonl"]  # no temporary left


def test_ddp_two_processes_match_one(tmp_path, corpus):
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2",
           *runner_cmd(tmp_path, max_steps=6, eval_interval=3, fim_interval=3, warmup_steps=2, out_dir=str(tmp_path / "ddp"))]
    r = subprocess.run(cmd, env=env(), capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    one = train(tiny(tmp_path, "one", max_steps=6, eval_interval=3, fim_interval=3, warmup_steps=2, fim_rows=16),
                corpus=corpus)
    a, b = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert sorted(a) == list(range(1, 7))
    for s in a:  # same global batches, gradients averaged over ranks: equal up to reduction order
        assert a[s] == pytest.approx(b[s], rel=1e-5, abs=1e-6)
    assert losses(tmp_path / "ddp", "val/loss")[6] == pytest.approx(one["val/loss"], rel=1e-5)
    assert [x["step"] for x in read_log(tmp_path / "ddp", "fisher")] == [0, 3, 6]  # rank 0 only, once each
    cfg_rec = read_log(tmp_path / "ddp", "config")
    assert len(cfg_rec) == 1 and cfg_rec[0]["world_size"] == 2
    st = load_checkpoint(tmp_path / "ddp" / "ckpt.pt")
    assert st["world_size"] == 2 and len(st["rng"]) == 2


def test_run_folder_is_never_silently_overwritten(tmp_path, corpus):
    # regression: train() on a folder holding a run truncated its log.jsonl and replaced its ckpt.pt without a word
    run = tmp_path / "r"
    train(tiny(tmp_path, "r", max_steps=2, fim_interval=0), corpus=corpus)
    (run / "notes.txt").write_text("the user's own file")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RunExistsError) as e:
        train(tiny(tmp_path, "r", max_steps=3, fim_interval=0), corpus=corpus)
    assert isinstance(e.value, FileExistsError) and e.value.found == ["log.jsonl", "ckpt.pt"]
    assert str(run) in str(e.value) and "resume" in str(e.value) and "overwrite" in str(e.value)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # refused before anything was written

    # each artefact alone holds a run; an empty folder, an empty log or an empty tb/ do not
    for name in ("log.jsonl", "ckpt.pt", "tb/events.out.tfevents.1.host"):
        d = tmp_path / f"only_{name.split('/')[0]}"
        (d / name).parent.mkdir(parents=True)
        (d / name).write_bytes(b"x")
        with pytest.raises(RunExistsError):
            Trainer(tiny(tmp_path, d.name, fim_interval=0), corpus=corpus)
    empty = tmp_path / "empty"
    (empty / "tb").mkdir(parents=True)
    (empty / "log.jsonl").touch()
    Trainer(tiny(tmp_path, "empty", fim_interval=0), corpus=corpus).logger.close()

    # overwrite: the previous log, checkpoint (and tb/) go first, the user's file stays, the log holds one run
    res = train(tiny(tmp_path, "r", max_steps=3, fim_interval=0, overwrite=True), corpus=corpus)
    assert res["step"] == 3 and (run / "notes.txt").read_text() == "the user's own file"
    cfgs = read_log(run, "config")
    assert len(cfgs) == 1 and cfgs[0]["replaced"] == ["log.jsonl", "ckpt.pt"]
    assert sorted(losses(run)) == [1, 2, 3] and [r["step"] for r in read_log(run, "end")] == [3]

    # overwrite is a runtime field (a resumed run may differ in it) and excludes resume
    assert "overwrite" in RUNTIME_FIELDS
    with pytest.raises(ValueError, match="exclude each other"):
        TrainConfig(resume=True, overwrite=True)
    with pytest.raises(ValueError, match="exclude each other"):
        TrainConfig(resume="runs/x/ckpt.pt", overwrite=True)
    with pytest.raises(ValueError, match="overwrite must be"):
        TrainConfig(overwrite="yes")
    assert TrainConfig(resume="false", overwrite=True).overwrite  # the command line's "false" is no resume


def test_overwrite_leaves_one_tensorboard_run(tmp_path, corpus):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train(tiny(tmp_path, "tb", max_steps=4, fim_interval=0, tensorboard=True), corpus=corpus)
    train(tiny(tmp_path, "tb", max_steps=2, fim_interval=0, tensorboard=True, overwrite=True), corpus=corpus)
    assert len(list((tmp_path / "tb" / "tb").iterdir())) == 1  # one events file: the new run's
    acc = EventAccumulator(str(tmp_path / "tb" / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]


class CrashAt(Callback):
    def __init__(self, step): self.at = step
    def on_step_end(self, trainer):
        if trainer.step == self.at: raise RuntimeError("simulated crash")


def test_resume_without_checkpoint_starts_clean(tmp_path, corpus):
    # a run killed before its first checkpoint left a log: resume=True starts it again from step 0 and the
    # new log does not mix the two attempts
    train(tiny(tmp_path, "full"), corpus=corpus)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny(tmp_path, "early"), callbacks=[CrashAt(3)], corpus=corpus)
    assert not (tmp_path / "early" / "ckpt.pt").exists() and max(losses(tmp_path / "early")) == 3
    with pytest.raises(RunExistsError):
        train(tiny(tmp_path, "early"), corpus=corpus)
    res = train(tiny(tmp_path, "early", resume=True), corpus=corpus)
    assert res["step"] == 12 and read_log(tmp_path / "early", "config")[0]["replaced"] == ["log.jsonl"]
    again = trajectory(tmp_path / "early")
    again[0].pop("replaced")  # the config record says what it replaced; the rest is the uninterrupted run
    assert trajectory(tmp_path / "full") == again


def test_stop_by_callback_is_not_an_interruption(tmp_path, corpus):
    res = train(tiny(tmp_path, "s", fim_interval=0), callbacks=[StopAt(5)], corpus=corpus)
    assert (res["step"], res["stopped"], res["interrupted"]) == (5, True, None)
    last = read_log(tmp_path / "s")[-1]
    assert last["event"] == "interrupt" and last["signal"] is None and last["requested_by_callback"]
    assert last["checkpoint"] == res["checkpoint"] and load_checkpoint(res["checkpoint"])["step"] == 5
    assert not read_log(tmp_path / "s", "end")
    done = train(tiny(tmp_path, "s", fim_interval=0, resume=True), corpus=corpus)
    assert (done["step"], done["stopped"], done["interrupted"]) == (12, False, None)
    assert read_log(tmp_path / "s")[-1]["event"] == "end"


@pytest.mark.parametrize("dc", [TrainConfig, GPTConfig])
def test_every_config_field_is_documented_on_its_own_line(dc):
    # `fim-attention train` builds its flags' help from docments; a section comment above a field without one
    # used to become that field's help (docments(TrainConfig)["max_steps"] == "optimisation")
    import dataclasses
    import inspect
    import re
    from fastcore.docments import docments
    docs = docments(dc)
    inline = dict(re.findall(r"^    (\w+)\s*:[^#\n]*#\s*(.+?)\s*$", inspect.getsource(dc), flags=re.M))
    for f in dataclasses.fields(dc):
        assert docs[f.name] and docs[f.name] == inline.get(f.name), (f.name, docs[f.name])
