"""docs/scale-model.md's table is the embedded scale model's rule, per method and key: each row's embedded value is
what `experiment=embedded` (and the headline, which trains alike) resolves to, so the table and the presets cannot
drift apart."""
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import REPO

TABLE = REPO / "docs" / "scale-model.md"
ROW = re.compile(r"^\| (?P<method>\w+) \| (?P<key>[\w.]+) \|.*`(?P<path>[\w.]+) = (?P<value>[^`]+)`")


def _rows() -> list[tuple[str, str, object]]:
    rows = []
    for line in Path(TABLE).read_text(encoding="utf-8").splitlines():
        if (match := ROW.match(line)) is not None:
            value = match["value"]
            rows.append((match["method"], match["path"], None if value == "None" else yaml.safe_load(value)))
    return rows


def test_the_table_covers_every_method_that_trains():
    methods = {method for method, _, _ in _rows()}
    assert {"sft", "soc", "rft", "outcome_dpo", "self_explore", "bon_sft", "dpo", "xpo", "grpo"} <= methods
    assert len(_rows()) >= 40


@pytest.mark.parametrize("experiment", ["embedded", "headline"])
@pytest.mark.parametrize("method", sorted({method for method, _, _ in _rows()}))
def test_each_row_of_the_scale_rule_is_what_the_preset_resolves_to(compose_cfg, experiment, method):
    cfg = compose_cfg([f"experiment={experiment}", f"algorithm={method}"])
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for row_method, path, value in _rows():
        if row_method != method:
            continue
        actual = OmegaConf.select(resolved, path)
        actual = OmegaConf.to_container(actual) if OmegaConf.is_config(actual) else actual
        assert actual == value, f"{method}: {path} is {actual!r}, docs/scale-model.md says {value!r}"


def test_the_undertrained_floor_holds_for_every_method_at_the_headline_shapes(compose_cfg):
    """The optimizer steps each method's preset implies where its data's size is set by its keys (RFT: at least one
    target a question with a correct rationale, 95% of them on the version-3 task), against the report's floor of
    50. The Self-Explore family's DPO data is sampled (pairs per question): the report checks its steps at run time."""
    from framework.report.aggregate import UNDERTRAINED_MIN_STEPS

    def preset(method):
        return OmegaConf.to_container(compose_cfg(["experiment=headline", f"algorithm={method}"]), resolve=True)

    sft = preset("sft")["algorithm"]
    assert sft["max_steps"] >= UNDERTRAINED_MIN_STEPS
    rft = preset("rft")["algorithm"]
    assert 0.95 * 2000 / rft["per_device_train_batch_size"] >= UNDERTRAINED_MIN_STEPS
    bon_sft = preset("bon_sft")["algorithm"]
    assert bon_sft["train_prompts"] * bon_sft["num_train_epochs"] / bon_sft["per_device_train_batch_size"] \
        >= UNDERTRAINED_MIN_STEPS
    dpo = preset("dpo")["algorithm"]  # N // 2 pairs a prompt, ties aside
    assert 0.9 * dpo["train_prompts"] * dpo["samples_per_prompt"] // 2 / dpo["per_device_train_batch_size"] \
        >= UNDERTRAINED_MIN_STEPS
    xpo = preset("xpo")["algorithm"]
    assert xpo["train_prompts"] / xpo["per_device_train_batch_size"] >= UNDERTRAINED_MIN_STEPS
