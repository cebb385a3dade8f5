"""Bad input of a real run fails before any work, in one line naming the key: a directory the run writes (the
stage cache, Hydra's run or sweep directory) that cannot be created or written, and a seed the libraries would
refuse (numpy seeds only from [0, 2^32 - 1]; transformers' set_seed seeds numpy)."""
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra

from framework import __main__ as launcher
from framework.config import to_validated
from framework.errors import ConfigError


def _launch(monkeypatch, capsys, arguments: list[str]) -> str:
    """`python -m framework <arguments>` in this process: its exit code must be 2; returns its stderr."""
    monkeypatch.setattr(sys, "argv", ["framework", *arguments, "logger=none"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # main() sets it for Hydra; set, it asks for tracebacks
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit_info:
        launcher.main()
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("arguments, key", [
    (["hydra.run.dir={file}/run"], "hydra.run.dir"),
    (["-m", "seed=0,1", "hydra.sweep.dir={file}/sweep"], "hydra.sweep.dir"),
    (["stages.cache_dir={file}/cache", "hydra.run.dir={tmp}/run"], "stages.cache_dir"),
    (["stages.cache_dir={file}", "hydra.run.dir={tmp}/run"], "stages.cache_dir"),
])
def test_a_directory_the_run_cannot_create_fails_in_one_line_before_any_work(monkeypatch, capsys, tmp_path,
                                                                             arguments, key):
    file = tmp_path / "a-file"
    file.write_text("not a directory")
    arguments = [a.replace("{file}", str(file)).replace("{tmp}", str(tmp_path)) for a in arguments]
    error = _launch(monkeypatch, capsys, arguments)
    assert error.startswith(f"error: {key}: ") and str(file) in error, error
    assert error.strip().count("\n") == 0, error  # one line, no traceback
    assert sorted(path.name for path in tmp_path.iterdir()) in (["a-file"], ["a-file", "run"])  # nothing built


def test_an_unwritable_directory_is_refused_and_a_missing_one_is_judged_by_its_parent(monkeypatch, tmp_path):
    """Root writes through permission bits, so a read-only directory is simulated: access(2) says no."""
    from framework.paths import require_writable_directory

    require_writable_directory(tmp_path / "not" / "yet", "stages.cache_dir")  # creatable: fine, nothing created
    assert not (tmp_path / "not").exists()
    monkeypatch.setattr("os.access", lambda path, mode: str(path) != str(tmp_path))
    with pytest.raises(ConfigError, match=r"^stages.cache_dir: .*/not/yet' cannot be created: .* is not writable"):
        require_writable_directory(tmp_path / "not" / "yet", "stages.cache_dir")
    with pytest.raises(ConfigError, match=r"^hydra.run.dir: .* is not writable \(permissions or a read-only"):
        require_writable_directory(tmp_path, "hydra.run.dir")


@pytest.mark.parametrize("override, key", [
    ("seed=-1", "seed"), ("seed=4294967296", "seed"), ("model.init_seed=-3", "model.init_seed"),
])
def test_a_seed_numpy_would_refuse_fails_before_any_work(compose_cfg, override, key):
    with pytest.raises(ConfigError, match=rf"^{key} must be in \[0, 4294967295\] \(numpy's seed range\)"):
        to_validated(compose_cfg([override]))


def test_the_largest_seed_numpy_takes_is_accepted(compose_cfg):
    assert to_validated(compose_cfg(["seed=4294967295"])).seed == 2**32 - 1
