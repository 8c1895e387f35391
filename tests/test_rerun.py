"""Resuming a dataset written by an older release: fields the schema gained since count at their defaults."""

from __future__ import annotations

import pytest

from flows.build_dataset import check_rerun
from magicseg_models.config import load_config, public_config
from magicseg_models.dataset.store import DatasetStore
from magicseg_models.errors import ConfigError


def _header(store: DatasetStore, config: dict) -> None:
    store.write_run_header(config=config, planned=16, classes=["cat"], selected_classes=["cat"], models={})


def test_fields_added_since_the_header_do_not_block_a_resume(tmp_path):
    config = load_config("build", "tiny", out=str(tmp_path / "ds"))
    old = public_config(config)
    del old["annotate"]["segmenter"]["encoder_dtype"]  # written before these fields existed
    del old["generator"]["vae_decode_batch"]
    store = DatasetStore(config.out)
    _header(store, old)
    check_rerun(store, config, overwrite=False)  # resumes


def test_a_value_that_really_differs_is_still_refused(tmp_path):
    config = load_config("build", "tiny", out=str(tmp_path / "ds"))
    old = public_config(config)
    old["generator"]["steps"] = 3
    store = DatasetStore(config.out)
    _header(store, old)
    with pytest.raises(ConfigError, match=r"built with a different config \(generator.steps\)"):
        check_rerun(store, config, overwrite=False)
