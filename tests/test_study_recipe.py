"""The study's recipe: variants, seeds, AblationConfig (both stored formats), a run's TrainConfig."""
import json

import pytest

from fim_attention.model import GPTConfig
from fim_attention.study.recipe import AblationConfig, check_seeds, check_variants, study_recipe, train_config
from study_common import OLD_RECIPE, TINY


@pytest.mark.parametrize("bad", ["rra", "", "mla,foo"])
def test_check_variants_rejects(bad):
    with pytest.raises(ValueError):
        check_variants(bad)

def test_check_variants_and_seeds_normalise():
    assert check_variants("RA+MLA, standard,ra_mla") == ["ra_mla", "standard"]
    assert check_seeds(3) == [0, 1, 2] and check_seeds("2,0,2") == [2, 0]
    for bad in ("x", "-1", []):
        with pytest.raises(ValueError):
            check_seeds(bad)

@pytest.mark.parametrize("kw", [dict(variants=("rra",)), dict(seeds=(-1,)), dict(seeds=()), dict(probe_rows=0),
                                dict(probe_rows=True)])
def test_config_rejects(kw):
    with pytest.raises(ValueError):
        AblationConfig(**kw)

def test_config_rejects_bad_recipe():
    "The recipe's checks are TrainConfig's own (no second copy): steps < 1, a negative interval."
    for kw in (dict(max_steps=0), dict(fim_interval=-1)):
        with pytest.raises(ValueError):
            AblationConfig(study_recipe(**kw))
    with pytest.raises(ValueError):
        AblationConfig().with_steps(0)

def test_train_config_matches_recipe():
    cfg = train_config("mla_kvsplice", 7, AblationConfig(), "/tmp/x")
    assert (cfg.max_steps, cfg.warmup_steps, cfg.batch_size, cfg.seed, cfg.lr, cfg.min_lr) == (2500, 250, 16, 7, 6e-3, 6e-4)
    assert cfg.model.attn == "mla_kvsplice" and cfg.out_dir.endswith("mla_kvsplice_s7")
    assert (cfg.log_interval, cfg.tensorboard, cfg.eval_interval, cfg.fim_interval, cfg.ckpt_interval) == (10, False, 100, 250, 250)

def test_config_reads_the_stored_flat_recipe():
    "Regression: studies stored before the TrainConfig layout (flat `steps`, `n_layer`, ...) are the same study."
    old = AblationConfig.from_dict(OLD_RECIPE)
    assert old.recipe() == AblationConfig().recipe() and old.train == AblationConfig().train
    assert AblationConfig.from_dict({**OLD_RECIPE, "steps": 1000}).train.warmup_steps == 100  # None meant 10% of steps
    assert AblationConfig.from_dict({**OLD_RECIPE, "warmup_steps": 7}).train.warmup_steps == 7
    assert AblationConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(ValueError, match="unknown recipe fields"):
        AblationConfig.from_dict({"stepz": 3})
    # what every run of the old recipe trained with, field by field (the 15 fields the old train_config mapped)
    t = train_config("ra", 1, old, "o")
    assert (t.max_steps, t.batch_size, t.lr, t.min_lr, t.warmup_steps, t.eval_interval, t.eval_windows, t.log_interval,
            t.ckpt_interval, t.tensorboard, t.fim_interval, t.fim_batch_size, t.fim_rows, t.data, t.model) == \
        (2500, 16, 6e-3, 6e-4, 250, 100, 128, 10, 250, False, 250, 4, 64, None,
         GPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=128, attn="ra"))
