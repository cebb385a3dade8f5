"""`python -m framework --help`: the groups a user turns and their options, each with one line; schemas and the
presets' internal groups are no options."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from framework.errors import ConfigError
from framework.help import GROUPS, help_text, refuse_schema_choices
from framework.paths import CONF_DIR


@pytest.fixture
def hydra_loader():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield GlobalHydra.instance().config_loader()
    GlobalHydra.instance().clear()


def test_help_lists_every_group_and_option_with_a_line_and_no_schema_or_internal_group(hydra_loader):
    text = help_text().replace("$$", "$")
    assert "_schema" not in text and "preset_" not in text
    headers = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert headers == list(GROUPS)
    for group in GROUPS:
        for file in sorted((Path(CONF_DIR) / group).glob("*.yaml")):
            first = next(line for line in file.read_text().splitlines()
                         if line.startswith("#") and not line.startswith("# @package"))
            option_lines = [line for line in text.splitlines() if line[4:].split(" ")[0] == file.stem]
            assert any(line.endswith(first.lstrip("# ").strip()) for line in option_lines), (group, file.stem)
    for line in text.splitlines():
        if line.startswith("    ") or line.startswith("  * "):  # an option: its name, then its description
            assert len(line[4:].split(None, 1)) == 2, line


def test_an_option_registered_from_code_is_described_by_its_schema_docstring(hydra_loader):
    from dataclasses import dataclass

    from hydra.core.config_store import ConfigStore

    from framework.config import DecoderConfig
    from framework.help import description

    @dataclass
    class LoudConfig(DecoderConfig):
        """Greedy decoding, but louder."""

        name: str = "loud"

    ConfigStore.instance().store(group="decoder", name="loud_for_help_test", node=LoudConfig)
    try:
        assert description("decoder", "loud_for_help_test", hydra_loader) == "Greedy decoding, but louder."
    finally:
        ConfigStore.instance().repo["decoder"].pop("loud_for_help_test.yaml")


def test_a_schema_chosen_as_an_option_is_refused_with_the_options(hydra_loader):
    refuse_schema_choices({"algorithm": "sft", "decoder": "beam"}, hydra_loader)
    with pytest.raises(ConfigError) as error:
        refuse_schema_choices({"algorithm": "sft_schema"}, hydra_loader)
    assert str(error.value) == ("algorithm=sft_schema: a schema, not an option; available: bon_sft, dpo, grpo, none, "
                                "outcome_dpo, rft, self_explore, sft, soc, xpo")


@pytest.mark.slow
def test_help_in_the_console_is_the_framework_s_and_says_nothing_else(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}  # WANDB_MODE: transformers printed a line
    result = subprocess.run([sys.executable, "-m", "framework", "--help"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    assert result.stdout.startswith("python -m framework: post-train a reasoning model")
    assert "algorithm: the post-training method" in result.stdout and "  * sft " in result.stdout
    assert "_schema" not in result.stdout and "preset_" not in result.stdout and "WANDB" not in result.stdout
