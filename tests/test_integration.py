"""Every algorithm x decoder runs end to end on a tiny model; results and generations are written."""
import json
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import FAST, FAST_TRAINING
from framework import registry
from framework.__main__ import CONF_DIR
from framework.job import run
from framework.data.answers import NumericAnswerChecker

DECODERS = {"greedy": [], "sample": ["decoder.samples_per_prompt=2"], "beam": ["decoder.num_beams=2"],
            "bon": ["decoder.samples_per_prompt=3", "decoder.curve_draws=5"]}


# Label-free methods start from the random base here (the SFT warm start has its own test) and sample
# little; a random model rarely ends with EOS, so unfinished samples are kept.
SAMPLING = ["algorithm.starting_point=base", "algorithm.samples_per_prompt=3", "algorithm.max_new_tokens=12",
            "algorithm.require_finished=false"]
ALGORITHM_OVERRIDES = {
    "bon_sft": SAMPLING,
    "dpo": SAMPLING,
    "xpo": ["algorithm.starting_point=base", "algorithm.max_new_tokens=12"],
    # FAST_TRAINING's batch of 8 completions: 2 questions x 4 samples a step
    "grpo": ["algorithm.starting_point=base", "algorithm.max_new_tokens=12", "algorithm.num_generations=4",
             "algorithm.gradient_accumulation_steps=1"],
    # The random base gets no rationale right, so RFT has no target and Self-Explore / outcome DPO no pair:
    # on_empty=skip_training runs sampling, exploration and pair building, then returns the start model
    # (by default that is a ConfigError; tests/test_self_explore.py trains every stage on scripted samples).
    "rft": ["algorithm.starting_point=base", "algorithm.rationales_per_question=2", "algorithm.max_new_tokens=12",
            "algorithm.require_finished=false", "algorithm.on_empty=skip_training"],
    "outcome_dpo": ["algorithm.starting_point=base", "algorithm.rationales_per_question=2",
                    "algorithm.max_new_tokens=12", "algorithm.require_finished=false",
                    "algorithm.on_empty=skip_training", "algorithm.rft.max_steps=2",
                    "algorithm.rft.per_device_train_batch_size=8"],
    "self_explore": ["algorithm.starting_point=base", "algorithm.rationales_per_question=2",
                     "algorithm.max_new_tokens=12", "algorithm.require_finished=false",
                     "algorithm.on_empty=skip_training", "algorithm.rft.max_steps=2",
                     "algorithm.rft.per_device_train_batch_size=8", "algorithm.continuations_per_step=2",
                     "algorithm.continuation_max_new_tokens=12"],
}


def _overrides(algorithm):
    return [f"algorithm={algorithm}", *FAST, *(FAST_TRAINING if algorithm != "none" else []),
            *ALGORITHM_OVERRIDES.get(algorithm, [])]


def recompute_scores(run_dir: Path, checker) -> dict[int, list[dict]]:
    """Check a run's written scores against its generations: each record's verdict is `checker`'s on its
    generation and gold, and results.json's accuracy (flexible too) is the mean over problems of the share
    of chosen candidates that are right (greedy/beam: the output; sample: every sample, so the expected
    accuracy of one sample; bon: the selected candidate). Returns each problem's chosen records."""
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    chosen = defaultdict(list)
    for record in map(json.loads, (run_dir / "generations.jsonl").open()):
        verdict = checker.check(record["generation"], record["gold"])
        assert (record["extracted"], record["correct"], record["correct_flexible"]) == (
            verdict.extracted, verdict.correct, verdict.correct_flexible), record
        if record["chosen"]:
            chosen[record["problem"]].append(record)
    assert sorted(chosen) == list(range(metrics["num_problems"]))
    for key, flag in (("accuracy", "correct"), ("accuracy_flexible", "correct_flexible")):
        shares = [sum(record[flag] for record in records) / len(records) for records in chosen.values()]
        assert metrics[key] == pytest.approx(sum(shares) / len(shares), abs=1e-12), key
    return chosen


def test_every_builtin_algorithm_is_tested():
    """conf/algorithm/*.yaml, the built-in registrations and the end-to-end parametrisation below name the
    same methods: a method whose plugin disappeared, or one that no run here covers, fails."""
    options = {path.stem for path in (Path(CONF_DIR) / "algorithm").glob("*.yaml")}
    builtin = {name for name in registry.algorithms.names()
               if registry.algorithms.get(name).__module__.startswith("framework.")}  # not tests' toy plugin
    assert options - builtin == set(), "YAML options without a registered plugin"
    assert builtin - options == set(), "registered algorithms without a YAML option"
    parametrised = next(mark.args[1] for mark in test_algorithm_x_decoder_runs.pytestmark
                        if mark.name == "parametrize" and mark.args[0] == "algorithm")
    assert builtin - set(parametrised) == set(), "registered algorithms no end-to-end run covers"
    assert set(ALGORITHM_OVERRIDES) <= builtin, "overrides for an algorithm that no longer exists"


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("algorithm", registry.algorithms.names())
def test_algorithm_x_decoder_runs(compose_cfg, shared_cache, tmp_path, algorithm, decoder):
    cfg = compose_cfg([*_overrides(algorithm), f"decoder={decoder}", *DECODERS[decoder]], shared_cache)
    results = run(cfg, tmp_path)
    metrics = results["metrics"]
    assert metrics["num_problems"] == 6
    assert metrics["accuracy_ci_low"] <= metrics["accuracy"] <= metrics["accuracy_ci_high"]
    assert json.loads((tmp_path / "results.json").read_text())["metrics"] == metrics
    records = [json.loads(line) for line in (tmp_path / "generations.jsonl").open()]
    per_prompt = 1 if decoder == "beam" else results["decoder_config"].get("samples_per_prompt", 1)
    assert len(records) == 6 * per_prompt
    assert {"generation", "extracted", "gold", "correct", "logprob", "num_tokens"} <= set(records[0])
    chosen = recompute_scores(tmp_path, NumericAnswerChecker())
    # sample scores every sample; greedy and beam their one output; bon the one candidate it selected
    assert {len(records) for records in chosen.values()} == {per_prompt if decoder == "sample" else 1}
    assert (tmp_path / "config.yaml").is_file()
    if decoder == "sample":
        assert "pass@2" in metrics
    if decoder == "bon":
        assert metrics["bon_accuracy_by_n"]["3"] == metrics["accuracy"] and "pass@3" in metrics
        assert "greedy_accuracy" in metrics and "lift_over_greedy" in metrics


def test_identical_runs_give_identical_metrics(compose_cfg, tmp_path):
    overrides = [*_overrides("sft"), "decoder=sample", "decoder.samples_per_prompt=2", "stages.reuse=false"]
    first = run(compose_cfg(overrides, tmp_path / "cache"), tmp_path / "a")["metrics"]
    second = run(compose_cfg(overrides, tmp_path / "cache"), tmp_path / "b")["metrics"]
    for key in ("accuracy", "mean_logprob", "mean_tokens"):
        assert first[key] == second[key]


def test_trained_stage_is_reused_across_decoders(compose_cfg, tmp_path):
    cache = tmp_path / "cache"
    greedy = run(compose_cfg([*_overrides("sft"), "decoder=greedy"], cache), tmp_path / "a")
    beam = run(compose_cfg([*_overrides("sft"), "decoder=beam", "decoder.num_beams=2"], cache), tmp_path / "b")
    assert greedy["policy"] == beam["policy"]
    assert len(list((cache / "sft").glob("*/stage.json"))) == 1


def test_a_rerun_reuses_the_evaluation_and_counts_every_stage_of_the_model(compose_cfg, tmp_path):
    """The second identical job decodes nothing (the evaluation is a stage) and reports the same numbers;
    both report the compute of every stage the model rests on (the SFT warm start, the sampled set, the
    BoN-SFT training), although the second computed none of them."""
    cache = tmp_path / "cache"
    warm_start = [override.replace("algorithm.", "algorithm.sft.", 1) for override in FAST_TRAINING]
    overrides = [*_overrides("bon_sft"), "algorithm.starting_point=sft", *warm_start, "decoder=sample",
                 "decoder.samples_per_prompt=2"]
    first = run(compose_cfg(overrides, cache), tmp_path / "a")
    second = run(compose_cfg(overrides, cache), tmp_path / "b")
    assert not first["evaluation_reused"] and second["evaluation_reused"]
    assert first["metrics"] == second["metrics"]
    assert (tmp_path / "a" / "generations.jsonl").read_text() == (tmp_path / "b" / "generations.jsonl").read_text()
    assert first["compute"] == second["compute"]
    kinds = sorted(entry["kind"] for entry in first["compute"]["stages"])
    assert kinds == ["base-tiny", "bon_sft", "evaluation", "premises", "samples", "sft"]
    stages = {entry["kind"]: entry for entry in first["compute"]["stages"]}
    # two optimizer steps of batch 8 on each of SFT and BoN-SFT: non-padding tokens of those batches
    assert stages["sft"]["train_tokens"] > 0 and stages["bon_sft"]["train_tokens"] > 0
    assert first["compute"]["train_tokens"] == stages["sft"]["train_tokens"] + stages["bon_sft"]["train_tokens"]
    samples = [json.loads(line) for line in next((cache / "samples").glob("*/output/samples.jsonl")).open()]
    assert first["compute"]["sampling_generated_tokens"] == sum(
        candidate["num_tokens"] for record in samples for candidate in record["candidates"])


def test_seeds_share_deterministic_evaluations_of_one_model(compose_cfg, tmp_path):
    """The untrained model under another seed is the same model: greedy and beam reuse the first seed's
    evaluation; a sampling decoder draws again."""
    cache = tmp_path / "cache"
    for decoder, reused in (["decoder=greedy"], True), (["decoder=beam", "decoder.num_beams=2"], True), \
                           (["decoder=sample", "decoder.samples_per_prompt=2"], False):
        overrides = [*_overrides("none"), *decoder]
        first = run(compose_cfg([*overrides, "seed=0"], cache), tmp_path / f"{decoder[0]}-0")
        second = run(compose_cfg([*overrides, "seed=1"], cache), tmp_path / f"{decoder[0]}-1")
        assert not first["evaluation_reused"] and second["evaluation_reused"] is reused, decoder
        if reused:
            assert first["metrics"] == second["metrics"]


def test_wandb_offline_run_is_written(compose_cfg, shared_cache, tmp_path):
    overrides = [*_overrides("none"), "logger=wandb", "logger.mode=offline"]
    run(compose_cfg(overrides, shared_cache), tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_external_plugin_registers_through_an_entry_point(compose_cfg, shared_cache, tmp_path, monkeypatch):
    """An installed package advertising `framework.plugins` adds `algorithm=<name>` with no YAML."""
    import sys
    from importlib.metadata import EntryPoint

    import framework.registry as registry_module

    sys.path.insert(0, str(Path(__file__).parent / "plugins"))
    entry = EntryPoint(name="toy", value="toy_algorithm", group=registry_module.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [entry] if group == entry.group else [])
    monkeypatch.setattr(registry_module, "_LOADED", False)
    registry_module.load_plugins()
    assert "toy" in registry.algorithms.names()
    results = run(compose_cfg([*_overrides("none"), "algorithm=toy", "algorithm.marker=42"], shared_cache), tmp_path)
    assert results["algorithm"] == "toy" and (tmp_path / "toy_marker.txt").read_text() == "42"


def test_sft_starting_point_trains_the_sft_stage_once_and_shares_it(compose_cfg, tmp_path):
    """`starting_point: sft` trains SFT with the method's `sft` keys: with keys equal to an `algorithm=sft`
    job's (here FAST_TRAINING's), the very stage that job uses."""
    warm_start = [override.replace("algorithm.", "algorithm.sft.", 1) for override in FAST_TRAINING]
    cache = tmp_path / "cache"
    sharpened = run(compose_cfg([*_overrides("bon_sft"), "algorithm.starting_point=sft", *warm_start], cache),
                    tmp_path / "a")
    assert len(list((cache / "sft").glob("*/stage.json"))) == 1
    samples = json.loads(next((cache / "samples").glob("*/stage.json")).read_text())
    assert samples["spec"]["base"]["stage"] == "sft"  # sampled from the SFT model, not the random base
    sft_job = run(compose_cfg(_overrides("sft"), cache), tmp_path / "b")
    assert len(list((cache / "sft").glob("*/stage.json"))) == 1  # reused, not retrained
    assert sft_job["policy"]["key"] == samples["spec"]["base"]["key"]
    assert sharpened["policy"]["stage"] == "bon_sft"


@pytest.mark.parametrize("experiment", ["none", "embedded", "headline"])
def test_sft_yaml_equals_the_defaults_the_warm_start_uses(compose_cfg, experiment):
    """Under each preset, algorithm=sft and every method's SFT warm start have equal keys (one shared SFT
    model per seed), and SOC trains with SFT's keys (the two differ only in the loss)."""
    from framework.algorithms.sft_stage import SFTAlgorithmConfig
    from framework.config import TrainingConfig, to_validated

    from dataclasses import asdict, fields

    sft_job = to_validated(compose_cfg([f"experiment={experiment}", "algorithm=sft"])).algorithm
    if experiment == "none":
        assert sft_job == SFTAlgorithmConfig()
    for method in ("bon_sft", "dpo", "xpo", "rft", "outcome_dpo", "self_explore", "grpo"):  # their default warm start
        warm_start = to_validated(compose_cfg([f"experiment={experiment}", f"algorithm={method}"])).algorithm.sft
        assert {"name": "sft", **asdict(warm_start)} == asdict(sft_job), method
    soc = to_validated(compose_cfg([f"experiment={experiment}", "algorithm=soc"])).algorithm
    for field in fields(TrainingConfig):
        assert getattr(soc, field.name) == getattr(sft_job, field.name), field.name


def test_a_methods_control_is_sft_on_demonstrations_from_its_start_with_its_steps(compose_cfg, tmp_path):
    """evaluation.control_decoders=[greedy]: after DPO (from the SFT model) the job also fine-tunes the SFT
    model on the gold demonstrations for as many optimizer steps, with DPO's learning rate and schedule, and
    evaluates it into control/; the report puts it in the row `dpo control` and compares DPO with it."""
    from framework import report

    cache = tmp_path / "cache"
    overrides = [*_overrides("dpo"), "algorithm.starting_point=sft", "algorithm.sft.max_steps=2",
                 "algorithm.sft.per_device_train_batch_size=8"]
    method = run(compose_cfg(overrides, cache), tmp_path / "sweep" / "0")
    assert "control" not in method  # not asked for
    both = run(compose_cfg([*overrides, "evaluation.control_decoders=[greedy]"], cache), tmp_path / "sweep" / "1")
    assert both["policy"] == method["policy"]  # the method's own model and evaluation are unchanged
    assert len(list((cache / "dpo").glob("*/stage.json"))) == 1  # DPO was reused, not retrained
    trained = json.loads(next((cache / "dpo").glob("*/stage.json")).read_text())
    control = json.loads((tmp_path / "sweep" / "1" / "control" / "results.json").read_text())
    assert control["control_of"] == "dpo" and control["policy"] == both["control"]["policy"]
    # an sft stage keyed as algorithm=sft's would be (the control of a method from the base with SFT's keys is SFT)
    assert control["policy"]["stage"] == "sft"
    record = json.loads((cache / "sft" / control["policy"]["key"] / "stage.json").read_text())
    assert record["global_step"] == trained["global_step"] == 2
    assert record["spec"]["algorithm"]["learning_rate"] == both["algorithm_config"]["learning_rate"]
    assert record["spec"]["algorithm"]["lr_scheduler_type"] == both["algorithm_config"]["lr_scheduler_type"]
    assert record["spec"]["base"] == trained["spec"]["base"]  # from the SFT model DPO trained from
    assert record["spec"]["base"]["stage"] == "sft"

    results, missing = report.collect(tmp_path / "sweep")
    assert sorted(r.method_label for r in results) == ["dpo", "dpo", "dpo control"] and not missing
    cells = report.aggregate([r for r in results if r.job_dir.name in ("1", "control")], resamples=200)
    by_method = {cell.algorithm: cell for cell in cells}
    assert by_method["dpo"].control_comparison is not None and by_method["dpo control"].control_comparison is None


def test_a_method_trained_from_the_base_with_sfts_keys_has_the_sft_model_itself_as_its_control(compose_cfg, tmp_path):
    """SOC trains from the model as built with SFT's keys and steps: its control is the SFT model, reused from the
    cache (the SFT job's own stage), not a second SFT trained beside it."""
    cache = tmp_path / "cache"
    sft = run(compose_cfg([*_overrides("sft")], cache), tmp_path / "sft")
    result = run(compose_cfg([*_overrides("soc"), "evaluation.control_decoders=[greedy]"], cache), tmp_path / "soc")
    assert result["control"]["policy"]["key"] == sft["policy"]["key"]
    assert len(list((cache / "sft").glob("*/stage.json"))) == 1


def test_decoder_max_problems_scores_the_first_problems_of_the_test_split(compose_cfg, tmp_path):
    """decoder.max_problems=4 of FAST's 6 test problems: the job scores problems 0-3, the same prompts the
    whole-split job scores first."""
    cache = tmp_path / "cache"
    whole = run(compose_cfg(["algorithm=none", *FAST], cache), tmp_path / "whole")
    first = run(compose_cfg(["algorithm=none", *FAST, "decoder.max_problems=4"], cache), tmp_path / "first")
    assert (whole["metrics"]["num_problems"], first["metrics"]["num_problems"]) == (6, 4)
    rows = lambda job: [json.loads(line) for line in (tmp_path / job / "generations.jsonl").open()]
    assert [r["question"] for r in rows("first")] == [r["question"] for r in rows("whole")][:4]


def test_an_unknown_control_decoder_is_refused_before_anything_is_built(compose_cfg, tmp_path):
    from framework.errors import ConfigError

    with pytest.raises(ConfigError, match=r"evaluation.control_decoders: greedyy is no decoder; available: .*greedy"):
        run(compose_cfg([*_overrides("dpo"), "evaluation.control_decoders=[greedyy]"], tmp_path / "cache"),
            tmp_path / "job")
    assert not (tmp_path / "cache").exists()  # refused before the base model was built
