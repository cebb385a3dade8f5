"""The sweeper of `-m` (framework/sweeper.py): every job of the grid is checked before the first one runs, and
job directories are named for the swept values that tell them apart."""
import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, RunMode

from framework.errors import ConfigError
from framework.paths import CONF_DIR
from framework.sweeper import MAX_NAME_CHARACTERS, job_labels

GROUPS = {"algorithm", "decoder", "model", "dataset", "experiment", "sweeps"}


def test_job_labels_name_the_swept_values_that_differ_and_nothing_else():
    jobs = [["experiment=headline", "seed=0", "algorithm=sft", "decoder=greedy"],
            ["experiment=headline", "seed=1", "algorithm=dpo", "decoder=greedy"]]
    assert job_labels(jobs, GROUPS) == ["seed=0_sft", "seed=1_dpo"]  # an option by its name, a key by its last part
    assert job_labels([["dataset.test_size=20"], ["dataset.test_size=-5"]], GROUPS) == ["test_size=20", "test_size=-5"]
    assert job_labels([["algorithm=sft"]], GROUPS) == [""]  # a sweep of one job: nothing differs


def test_job_labels_keep_keys_apart_and_stay_filesystem_safe():
    jobs = [["algorithm.max_steps=10", "dataset.max_steps=2", "dataset.path=/data/a b"],
            ["algorithm.max_steps=20", "dataset.max_steps=3", "dataset.path=/data/c:d"]]
    first, second = job_labels(jobs, GROUPS)
    assert first == "algorithm.max_steps=10_dataset.max_steps=2_path=a-b"  # two max_steps: whole keys
    assert second == "algorithm.max_steps=20_dataset.max_steps=3_path=c-d"  # a path: its last part
    long = [[f"+algorithm.trainer.lr_scheduler_kwargs={{power: {n}, note: {'x' * 90}}}"] for n in (1, 2)]
    names = job_labels(long, GROUPS)
    assert all(len(name) <= MAX_NAME_CHARACTERS for name in names) and names[0] != names[1]


def _sweeper_class():
    """The class Hydra instantiates, as its plugin scan made it (Hydra re-executes the plugin modules it scans)."""
    from hydra.core.plugins import Plugins

    return Plugins.instance().class_name_to_class["hydra_plugins.framework_sweeper.CheckedSweeper"]


class _RecordingLauncher:
    def __init__(self):
        self.batches = []

    def launch(self, batch, initial_job_idx):
        self.batches.append([list(job) for job in batch])
        return [JobReturn(status=JobStatus.COMPLETED, _return_value=0.5) for _ in batch]


@pytest.fixture
def sweeper(tmp_path):
    """The framework's sweeper on conf/, launching into a recorder instead of running jobs."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [f"hydra.sweep.dir={tmp_path / 'sweep'}", "logger=none"],
                                           RunMode.MULTIRUN)
        checked = _sweeper_class()(max_batch_size=None)
        checked.config, checked.hydra_context = master, HydraContext(config_loader=loader, callbacks=None)
        checked.launcher = _RecordingLauncher()
        yield checked
    GlobalHydra.instance().clear()


def test_a_bad_grid_point_is_refused_before_the_first_job_naming_its_overrides_and_key(sweeper, tmp_path):
    with pytest.raises(ConfigError) as error:
        sweeper.sweep(["dataset.test_size=20,-5", "decoder=greedy,beam"])
    assert str(error.value) == ("sweep job 2 of 4 (dataset.test_size=-5 decoder=greedy): dataset.test_size must "
                                "be >= 1 or null (got -5)")
    assert sweeper.launcher.batches == [] and not (tmp_path / "sweep").exists()  # nothing ran, nothing written


@pytest.mark.parametrize("arguments, message", [
    (["algorithm=sft,nope"], "sweep job 1 of 2 (algorithm=nope): algorithm=nope: no such option; available: bon_sft"),
    (["algorithm=sft,dpo_schema"], "sweep job 1 of 2 (algorithm=dpo_schema): algorithm=dpo_schema: a schema, not an "
                                   "option; available: bon_sft, dpo, grpo, none"),
    (["algorithm=sft,dpo", "+algorithm.trainer.optim=adafactorr"],
     "sweep job 0 of 2 (algorithm=sft): algorithm.trainer.optim is not a valid OptimizerNames"),
])
def test_options_schemas_and_trainer_values_are_checked_for_every_job(sweeper, arguments, message):
    with pytest.raises(ConfigError) as error:
        sweeper.sweep(arguments)
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)
    assert sweeper.launcher.batches == []


def test_each_job_directory_is_named_for_its_swept_values(sweeper):
    sweeper.sweep(["dataset.test_size=20,30", "decoder=greedy,beam"])
    (batch,) = sweeper.launcher.batches
    assert [job[-1] for job in batch] == ["hydra.sweep.subdir='0_test_size=20_greedy'",
                                          "hydra.sweep.subdir='1_test_size=20_beam'",
                                          "hydra.sweep.subdir='2_test_size=30_greedy'",
                                          "hydra.sweep.subdir='3_test_size=30_beam'"]
    assert batch[3][:-1] == ["dataset.test_size=30", "decoder=beam"]  # the job's own overrides, unchanged


def test_a_subdir_given_on_the_command_line_is_kept(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=job${hydra.job.num}"],
                                           RunMode.MULTIRUN)
        checked = _sweeper_class()(max_batch_size=1)
        checked.config, checked.hydra_context = master, HydraContext(config_loader=loader, callbacks=None)
        checked.launcher = _RecordingLauncher()
        checked.sweep(["seed=0,1"])
    GlobalHydra.instance().clear()
    assert checked.launcher.batches == [[["seed=0"]], [["seed=1"]]]  # two batches, no subdir of the sweeper's


def test_the_framework_sweeper_is_the_default_and_a_sweep_file_can_choose_another(compose_cfg):
    from hydra import compose

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        default = compose("config", return_hydra_config=True)
        search = compose("config", overrides=["sweeps=search_sft"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert default.hydra.sweeper._target_ == "hydra_plugins.framework_sweeper.CheckedSweeper"
    assert search.hydra.sweeper._target_.endswith("OptunaSweeper")


def test_hydra_finds_the_sweeper_class_in_its_plugin_namespace():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    found = {f"{cls.__module__}.{cls.__name__}" for cls in Plugins.instance().discover(Sweeper)}
    assert "hydra_plugins.framework_sweeper.CheckedSweeper" in found


def test_further_grids_run_after_the_first_each_expanded_with_the_command_lines_overrides(tmp_path):
    """hydra.sweeper.grids: one sweep of several grids (the headline's SOC widths beside its greedy table), every
    job checked first, the command line's overrides applying to every grid, directories named apart."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [f"hydra.sweep.dir={tmp_path / 'sweep'}", "logger=none"],
                                           RunMode.MULTIRUN)
        checked = _sweeper_class()(max_batch_size=None, params={"algorithm": "sft,soc", "decoder": "greedy"},
                                   grids=[{"algorithm": "soc", "decoder": "beam", "decoder.num_beams": "2,3"}])
        checked.config, checked.hydra_context = master, HydraContext(config_loader=loader, callbacks=None)
        checked.launcher = _RecordingLauncher()
        checked.sweep(["seed=7"])
        with pytest.raises(ConfigError, match=r"sweep job 3 of 4 \(.*decoder.num_beams=0\): decoder.num_beams must be >= 1"):
            bad = _sweeper_class()(max_batch_size=None, params={"algorithm": "sft,soc", "decoder": "greedy"},
                                   grids=[{"algorithm": "soc", "decoder": "beam", "decoder.num_beams": "2,0"}])
            bad.config, bad.hydra_context = master, HydraContext(config_loader=loader, callbacks=None)
            bad.launcher = _RecordingLauncher()
            bad.sweep([])
        assert bad.launcher.batches == []  # the second grid's bad job stopped the whole sweep before any ran
    GlobalHydra.instance().clear()
    jobs = [job for batch in checked.launcher.batches for job in batch]
    assert [job[:-1] for job in jobs] == [["algorithm=sft", "decoder=greedy", "seed=7"],
                                          ["algorithm=soc", "decoder=greedy", "seed=7"],
                                          ["algorithm=soc", "decoder=beam", "decoder.num_beams=2", "seed=7"],
                                          ["algorithm=soc", "decoder=beam", "decoder.num_beams=3", "seed=7"]]
    assert [job[-1] for job in jobs] == ["hydra.sweep.subdir='0_sft_greedy'", "hydra.sweep.subdir='1_soc_greedy'",
                                         "hydra.sweep.subdir='2_soc_beam_num_beams=2'",
                                         "hydra.sweep.subdir='3_soc_beam_num_beams=3'"]


def test_the_report_expects_every_grids_jobs(tmp_path):
    from omegaconf import OmegaConf

    from framework.report.sweep import expected_jobs

    OmegaConf.save({"hydra": {"sweeper": {"_target_": "hydra_plugins.framework_sweeper.CheckedSweeper",
                                          "params": {"seed": "0,1"}, "grids": [{"decoder": "beam,bon"}]},
                              "overrides": {"task": ["algorithm=sft"]}}}, tmp_path / "multirun.yaml")
    assert expected_jobs(tmp_path) == [["seed=0", "algorithm=sft"], ["seed=1", "algorithm=sft"],
                                       ["decoder=beam", "algorithm=sft"], ["decoder=bon", "algorithm=sft"]]
