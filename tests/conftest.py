"""Shared fixtures: offline environment, a tiny-but-real model config, and a composed-config helper."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from framework import registry  # noqa: E402
from framework.__main__ import CONF_DIR  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
registry.load_plugins()  # before collection, so parametrised tests see every registered algorithm

# Small enough that a whole run (pretrain, train, decode) takes seconds on 2 CPU cores.
FAST = [
    "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
    "model.pretrain_steps=2", "model.pretrain_examples=64", "dataset.train_size=32", "dataset.test_size=6",
    "decoder.max_new_tokens=24", "logger=none",
]
FAST_TRAINING = ["algorithm.max_steps=2", "algorithm.per_device_train_batch_size=8", "algorithm.save_steps=1",
                 "algorithm.logging_steps=1"]


def compose_config(overrides: list[str], cache_dir: Path | None = None):
    registry.load_plugins()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        extra = [f"stages.cache_dir={cache_dir}"] if cache_dir is not None else []
        return compose(config_name="config", overrides=[*overrides, *extra])


# Prompts in the embedded task's format, for decoding tests on a small random model.
PROMPTS = ["Ann has 3 pens. Ann finds 4 more. How many pens does Ann have now?\n",
           "Ben has 12 coins. Ben loses 2. Ben sells 5. How many coins does Ben have now?\n",
           "Kim has 7 cards.\n"]


# Lines of figures a test measured (the vLLM tier's agreement, start-up seconds and tokens/s), printed after
# the results whether the tests passed or not.
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.write_sep("-", "measured")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """A small random Llama with the embedded tokenizer: fast, and its outputs are arbitrary token runs."""
    from framework import tiny

    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                             max_positions=128, seed=0)
    return model.eval(), tokenizer


@pytest.fixture
def compose_cfg():
    return compose_config


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One stage cache for the whole session, so the tiny base model is built once."""
    return tmp_path_factory.mktemp("stage-cache")
