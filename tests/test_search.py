"""The hyperparameter-search preset (sweeps/search_sft.yaml): Optuna's sweeper maximising the accuracy the
launcher returns (on a validation split), over keys the chosen method's schema has; and a real two-trial search
with its report."""
import json
import subprocess
import sys
from dataclasses import fields, is_dataclass

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import FAST, FAST_TRAINING, REPO
from framework import registry
from framework.__main__ import CONF_DIR
from framework.config import to_validated

PRESET = "sweeps=search_sft"


def compose_search(overrides=(), hydra_config=True):
    registry.load_plugins()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[PRESET, *overrides], return_hydra_config=hydra_config)


def test_search_preset_selects_optunas_seeded_tpe_maximising_accuracy_one_trial_at_a_time():
    import optuna

    sweeper_config = compose_search().hydra.sweeper
    assert sweeper_config.direction == "maximize"  # hydra_entry returns the validation split's accuracy
    assert sweeper_config.n_jobs == 1 and 1 <= sweeper_config.n_trials <= 50
    sweeper = instantiate(sweeper_config)  # as Hydra builds it: the sampler's keys must suit this Optuna
    assert type(sweeper).__name__ == "OptunaSweeper"
    assert isinstance(sweeper.sweeper.sampler, optuna.samplers.TPESampler)
    assert isinstance(sweeper_config.sampler.seed, int)  # a rerun proposes the same trials (and reuses their stages)


def test_search_space_parses_as_distributions_over_keys_of_the_chosen_algorithms_schema():
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    params = compose_search().hydra.sweeper.params
    distributions, fixed = create_params_from_overrides([f"{key}={value}" for key, value in params.items()])
    assert set(distributions) == {"algorithm.learning_rate", "algorithm.num_train_epochs"}  # parsed as ranges
    assert fixed == {"algorithm.max_steps": "-1"}  # or max_steps would cap the epochs being searched
    settings = to_validated(compose_search(hydra_config=False))
    assert settings.algorithm.name == "sft"
    for key in [*distributions, *fixed]:
        assert key.startswith("algorithm."), f"{key}: the preset searches the method's own keys"
        assert _schema_has(settings, key), f"{key}: no such key in algorithm={settings.algorithm.name}'s schema"


def _schema_has(settings, key: str) -> bool:
    node = settings
    for part in key.split("."):
        if not is_dataclass(node) or part not in {item.name for item in fields(node)}:
            return False
        node = getattr(node, part)
    return True


@pytest.mark.slow  # about 20 s on 2 cores: two tiny trainings in one Hydra process
def test_two_trial_search_writes_each_trials_results_the_best_trial_and_the_report(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "framework", "-m", PRESET, "hydra.sweeper.n_trials=2",
               *[o for o in FAST if not o.startswith("dataset.train_size=")], "dataset.train_size=16",
               *[o for o in FAST_TRAINING if not o.startswith("algorithm.max_steps=")],  # epochs decide: 2 or 4 steps
               "algorithm.num_train_epochs=choice(1,2)",  # replaces the preset's range from the command line
               f"hydra.sweep.dir={sweep_dir}", f"stages.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    results = sorted(sweep_dir.glob("*/results.json"))
    assert len(results) == 2, results
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    # the objective Optuna read is each trial's accuracy on the validation split (the preset's), not on the test split
    trials = [json.loads(path.read_text()) for path in results]
    assert all(trial["objective"] == "validation" for trial in trials)
    assert best.best_value == max(trial["validation"]["metrics"]["accuracy"] for trial in trials)
    assert set(best.best_params) == {"algorithm.learning_rate", "algorithm.num_train_epochs"}
    assert best.best_params["algorithm.num_train_epochs"] in (1, 2)
    assert 1e-6 <= best.best_params["algorithm.learning_rate"] <= 1e-3
    report = (sweep_dir / "report.md").read_text()  # the multirun callback ran under Optuna's sweeper
    assert report.count("| sft(learning_rate=") == 2  # each trial is its own row, not pooled as one method
    assert "setup plugin" not in done.stdout  # alembic's import chatter is silenced by the preset


def test_a_stored_search_loads_a_study_named_for_its_method():
    # one study per method in a shared storage file: a DPO search must not continue SFT's trials
    assert compose_search().hydra.sweeper.study_name == "search_sft"
    assert compose_search(["algorithm=dpo"]).hydra.sweeper.study_name == "search_dpo"
    assert compose_search().hydra.sweeper.storage is None  # in memory unless the user asks for a file


def test_optunas_sqlite_storage_keeps_a_studys_trials_with_the_installed_sqlalchemy(tmp_path):
    # optuna 2.10 (the newest hydra-optuna-sweeper 1.3 allows) fails on any RDB storage under SQLAlchemy 2:
    # this fails if the search extra's SQLAlchemy < 2 pin is lost
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for _ in range(2):  # a new storage connection each time, as a rerun of the search makes
        study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    reloaded = optuna.load_study(study_name="s", storage=storage)
    assert [trial.state for trial in reloaded.trials] == [optuna.trial.TrialState.COMPLETE] * 2


@pytest.mark.slow  # 50-90 s on 2 busy cores: two runs of a one-trial search
def test_rerunning_a_stored_search_continues_its_study(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, "-m", "framework", "-m", PRESET, "hydra.sweeper.n_trials=1",
               f"hydra.sweeper.storage={storage}",
               *[o for o in FAST if not o.startswith("dataset.train_size=")], "dataset.train_size=16",
               *[o for o in FAST_TRAINING if not o.startswith("algorithm.max_steps=")],
               "algorithm.num_train_epochs=choice(1,2)", f"stages.cache_dir={tmp_path / 'cache'}"]
    for run in ("first", "second"):  # the same command twice (only the sweep directory differs)
        done = subprocess.run([*command, f"hydra.sweep.dir={tmp_path / run}"], cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        assert len(list((tmp_path / run).glob("*/results.json"))) == 1  # each run ran its own one trial
    first = OmegaConf.load(tmp_path / "first" / "optimization_results.yaml")
    trials = optuna.load_study(study_name="search_sft", storage=storage).trials
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # the study's first trial is the first run's: the second run loaded it and added its own
    assert trials[0].params == dict(first.best_params) and trials[0].value == first.best_value
