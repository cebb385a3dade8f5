"""The experiment presets: every one composes and validates (with each method its sweep runs), and each paper
preset's resolved values are the numbers ../shared/docs/paper-recipes.md (and self-explore-repo.md) give."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from framework.__main__ import CONF_DIR
from framework.config import to_validated

DOCS = Path(__file__).resolve().parents[2] / "shared" / "docs"
EXPERIMENTS = sorted(path.stem for path in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def _sweep_values(experiment: str) -> dict[str, list[str]]:
    spec = OmegaConf.load(Path(CONF_DIR) / "experiment" / f"{experiment}.yaml")
    params = OmegaConf.select(spec, "hydra.sweeper.params", default={}) or {}
    return {key: [v.strip() for v in str(values).split(",")] for key, values in params.items()}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_composes_with_every_method_it_sweeps(compose_cfg, experiment):
    algorithms = _sweep_values(experiment).get("algorithm", [None])
    for algorithm in algorithms:
        overrides = [f"experiment={experiment}"] + ([f"algorithm={algorithm}"] if algorithm else [])
        to_validated(compose_cfg(overrides))


def test_the_paper_presets_exist():
    assert {"soc_paper", "sharpening_paper", "self_explore_paper", "embedded", "headline", "none"} <= set(EXPERIMENTS)


# (preset, algorithm, key, expected value, a phrase of the recipe document it comes from)
RECIPES = [
    # SOC (paper-recipes.md, "SOC")
    ("soc_paper", "soc", "algorithm.value_coef", 0.2, "L_SFT + 0.2 * L_V, beta 1"),
    ("soc_paper", "soc", "algorithm.beta", 1.0, "L_SFT + 0.2 * L_V, beta 1"),
    ("soc_paper", "soc", "decoder.num_beams", 5, "main width 5"),
    ("soc_paper", "soc", "model.name_or_path", "Qwen/Qwen2.5-1.5B", "Qwen2.5-3B, Qwen2.5-7B base"),
    ("soc_paper", "soc", "dataset.name", "math500", "MATH-500"),
    ("soc_paper", "soc", "decoder.max_new_tokens", 1024, "MATH / MATH-500 / GAOKAO 1024"),
    # sharpening (paper-recipes.md, "Sharpening")
    ("sharpening_paper", "bon_sft", "algorithm.samples_per_prompt", 50, "N = 50 samples at T = 1 per prompt"),
    ("sharpening_paper", "bon_sft", "algorithm.temperature", 1.0, "N = 50 samples at T = 1 per prompt"),
    ("sharpening_paper", "bon_sft", "algorithm.selector", "logprob", "keep the argmax of log pi_base"),
    ("sharpening_paper", "bon_sft", "model.lora.enabled", True, "LoRA (rank 16 on Phi-3.5-mini"),
    ("sharpening_paper", "bon_sft", "model.lora.rank", 16, "LoRA (rank 16 on Phi-3.5-mini"),
    ("sharpening_paper", "bon_sft", "algorithm.per_device_train_batch_size", 4, "batch 4, 30 epochs"),
    ("sharpening_paper", "bon_sft", "algorithm.num_train_epochs", 30.0, "batch 4, 30 epochs"),
    ("sharpening_paper", "bon_sft", "algorithm.weight_decay", 0.1, "weight decay 0.1 MATH"),
    ("sharpening_paper", "bon_sft", "algorithm.learning_rate", 3e-4, "lr 3e-4 linear to 0"),
    ("sharpening_paper", "bon_sft", "algorithm.lr_scheduler_type", "linear", "lr 3e-4 linear to 0"),
    ("sharpening_paper", "bon_sft", "algorithm.max_grad_norm", 0.1, "grad clip 0.1"),
    ("sharpening_paper", "bon_sft", "algorithm.train_prompts", 256, "256 items per task"),
    ("sharpening_paper", "bon_sft", "decoder.samples_per_prompt", 50, "N up to 50 at T = 1.0"),
    ("sharpening_paper", "bon_sft", "decoder.temperature", 1.0, "N up to 50 at T = 1.0"),
    ("sharpening_paper", "bon_sft", "decoder.max_new_tokens", 512, "max 512 new tokens"),
    ("sharpening_paper", "bon_sft", "dataset.few_shot_examples", 1, "1-shot prompts"),
    ("sharpening_paper", "bon_sft", "model.name_or_path", "microsoft/Phi-3.5-mini-instruct", "Phi-3.5-mini"),
    # Self-Explore (paper-recipes.md table, self-explore-repo.md)
    ("self_explore_paper", "sft", "algorithm.learning_rate", 1e-5, "global batch 64, lr 1e-5"),
    ("self_explore_paper", "sft", "algorithm.lr_scheduler_type", "linear", "AdamW, wd 0, linear, no warmup"),
    ("self_explore_paper", "sft", "algorithm.warmup_ratio", 0.0, "AdamW, wd 0, linear, no warmup"),
    ("self_explore_paper", "sft", "algorithm.num_train_epochs", 2.0, "paper epochs SFT 2, RFT 1"),
    ("self_explore_paper", "rft", "algorithm.num_train_epochs", 1.0, "paper epochs SFT 2, RFT 1"),
    ("self_explore_paper", "rft", "algorithm.rationales_per_question", 100, "N = 100, T = 0.7"),
    ("self_explore_paper", "rft", "algorithm.temperature", 0.7, "N = 100, T = 0.7"),
    ("self_explore_paper", "rft", "algorithm.max_correct_per_question", 8, "At most 8 per"),
    ("self_explore_paper", "rft", "algorithm.train_from", "base", "train RFT from the **base** model"),
    ("self_explore_paper", "self_explore", "algorithm.continuations_per_step", 4, "k = 4, T = 0.7"),
    ("self_explore_paper", "self_explore", "algorithm.exploration_temperature", 0.7, "k = 4, T = 0.7"),
    ("self_explore_paper", "self_explore", "algorithm.max_explored_steps", 20, "<= 20 steps"),
    ("self_explore_paper", "self_explore", "algorithm.beta", 0.1, "DPO | beta 0.1"),
    ("self_explore_paper", "self_explore", "algorithm.learning_rate", 1e-6, "lr 1e-6 (1e-7 Mistral), 3 epochs"),
    ("self_explore_paper", "self_explore", "algorithm.num_train_epochs", 3.0, "lr 1e-6 (1e-7 Mistral), 3 epochs"),
    ("self_explore_paper", "self_explore", "algorithm.trainer.optim", "rmsprop", "3 epochs, RMSprop"),
    ("self_explore_paper", "self_explore", "algorithm.warmup_ratio", 0.1, "warmup 0.1, global batch 32"),
    ("self_explore_paper", "self_explore", "algorithm.max_length", 384, "max length 384 (GSM8K)"),
    ("self_explore_paper", "outcome_dpo", "algorithm.max_length", 384, "max length 384 (GSM8K)"),
    ("self_explore_paper", "self_explore", "algorithm.rft.learning_rate", 1e-5, "global batch 64, lr 1e-5"),
    ("self_explore_paper", "self_explore", "algorithm.rejected_eos", False, "EOS is appended to the chosen only"),
    ("self_explore_paper", "self_explore", "algorithm.continuation_max_new_tokens", 512, "512 / 1024 new tokens"),
    ("self_explore_paper", "sft", "decoder.name", "greedy", "greedy, zero-shot, 512 / 1024 new tokens"),
    ("self_explore_paper", "sft", "decoder.max_new_tokens", 512, "greedy, zero-shot, 512 / 1024 new tokens"),
    ("self_explore_paper", "sft", "dataset.prompt_template", "{question}\n", "right-stripped, plus one"),
    # GRPO (paper-recipes.md, "GRPO"): no preset of its own, the method's defaults are the paper's
    ("none", "grpo", "algorithm.learning_rate", 1e-6, "policy lr 1e-6"),
    ("none", "grpo", "algorithm.beta", 0.04, "KL coefficient 0.04"),
    ("none", "grpo", "algorithm.num_generations", 64, "64 samples a question"),
    ("none", "grpo", "algorithm.num_iterations", 1, "one policy update per exploration stage"),
]
GLOBAL_BATCHES = [  # per-device batch x accumulation on one device
    ("self_explore_paper", "sft", 64, "global batch 64"), ("self_explore_paper", "rft", 64, "global batch 64"),
    ("self_explore_paper", "self_explore", 32, "global batch 32"),
    ("none", "grpo", 1024, "batch 1024 samples"),  # completions, as TRL counts: 16 questions x 64
]


def _doc_text() -> str:
    if not DOCS.is_dir():
        pytest.skip(f"{DOCS} is not available")
    return " ".join(" ".join(path.read_text().split()) for path in DOCS.glob("*.md"))


@pytest.mark.parametrize("preset, algorithm, key, expected, phrase", RECIPES,
                         ids=[f"{r[0]}-{r[1]}-{r[2]}" for r in RECIPES])
def test_paper_preset_holds_the_recipe_value(compose_cfg, preset, algorithm, key, expected, phrase):
    assert phrase in _doc_text(), f"the recipe no longer says {phrase!r}: check {key} again"
    config = OmegaConf.structured(to_validated(compose_cfg([f"experiment={preset}", f"algorithm={algorithm}"])))
    assert OmegaConf.select(config, key) == expected


@pytest.mark.parametrize("preset, algorithm, batch, phrase", GLOBAL_BATCHES)
def test_paper_preset_global_batch(compose_cfg, preset, algorithm, batch, phrase):
    assert phrase in _doc_text()
    config = to_validated(compose_cfg([f"experiment={preset}", f"algorithm={algorithm}"])).algorithm
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps == batch
