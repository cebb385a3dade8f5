"""The installed package: a wheel carries conf/ and sweeps/ inside the package (pyproject.toml), so
`python -m framework -m sweeps=<name>` works from a pip install, not only from a checkout."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO


def test_every_subpackage_of_framework_is_in_the_package_list():
    """pyproject.toml lists its packages by hand (setuptools' find cannot add conf/ and sweeps/ under
    framework/); a new subpackage missing from the list would be missing from every wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    subpackages = {".".join(path.parent.relative_to(REPO).parts) for path in (REPO / "framework").rglob("__init__.py")}
    # and the sweeper's plugin package, which Hydra finds only under the namespace hydra_plugins
    assert set(setuptools["packages"]) == subpackages | {"framework.conf", "framework.sweeps",
                                                         "hydra_plugins.framework_sweeper"}
    assert (REPO / "hydra_plugins" / "framework_sweeper" / "__init__.py").is_file()
    assert setuptools["package-dir"] == {"framework.conf": "conf", "framework.sweeps": "sweeps"}


@pytest.mark.slow
def test_an_installed_wheel_composes_a_sweep_preset_from_another_directory(tmp_path):
    """Build the wheel from a copy of the sources, install it with pip into a folder of its own, and compose
    sweeps=headline there with no checkout on the path: the config and the sweep come from the installed package."""
    pytest.importorskip("setuptools", minversion="70.1")  # the build backend in place (dev extra), offline
    source = tmp_path / "source"
    for name in ("framework", "conf", "sweeps", "hydra_plugins"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp_path / "dist",
                    source], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"framework/conf/config.yaml", "framework/sweeps/headline.yaml", "framework/sweeps/search_sft.yaml",
            "framework/sweeps/wandb/headline.yaml"} <= set(names)
    # no top-level conf/ or sweeps/: only the package, its metadata and the sweeper's plugin module (Hydra finds
    # plugins only under the hydra_plugins namespace)
    assert all(name.startswith(("framework/", "reasoning_posttrain_framework-", "hydra_plugins/framework_sweeper/"))
               for name in names)
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel], check=True,
                   capture_output=True, timeout=300)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}  # the wheel's copy, not the checkout's
    result = subprocess.run([sys.executable, "-m", "framework", "sweeps=headline", "--cfg", "all", "--resolve"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    config = OmegaConf.create(result.stdout[result.stdout.index("hydra:\n"):])  # after any log line; hydra comes first
    assert config.hydra.searchpath == [f"file://{site.resolve() / 'framework'}"]  # framework/paths.py's ROOT
    assert config.hydra.sweeper.params.experiment == "headline"
    assert config.hydra.runtime.choices.sweeps == "headline"
