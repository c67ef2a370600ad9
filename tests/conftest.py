"""pytest setup shared by tests/: a `slow` marker, skipped unless --runslow (or FIM_RUNSLOW=1); the study's smoke run."""
import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test, skipped unless --runslow or FIM_RUNSLOW=1")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("FIM_RUNSLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: use --runslow or FIM_RUNSLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def study_smoke(tmp_path_factory):
    "Two variants x one seed of a toy study (tests/study_common.py's TINY), trained once for the session: (folder, results)."
    from fim_attention.study.runner import run_ablation
    from study_common import TINY
    out = tmp_path_factory.mktemp("study") / "study"
    return out, run_ablation(["standard", "ra_mla_kvsplice"], [0], out_dir=out, config=TINY, progress=False)
