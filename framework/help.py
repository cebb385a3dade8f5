"""`python -m framework --help`: every config group a user turns and its options, each with one line.

Hydra's own listing shows every entry of every group, the schemas (`sft_schema`, the dataclasses each YAML
extends) and the experiment presets' internal `preset_*` groups among them, with no word about any. Here the
help template (hydra.help.template in conf/config.yaml) calls the `framework_help` resolver, which lists the
groups below with their options as the config loader finds them (the search path's own included), each
described by the first comment line of its YAML (for an option registered from code, its schema's docstring).
Schemas are no options: `<group>=<name>_schema` is refused (`refuse_schema_choices`).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from framework.errors import ConfigError

SCHEMA_SUFFIX = "_schema"
# The groups --help lists, in this order, with what each chooses. (Other groups are internal: the experiment
# presets' `preset_*`, Hydra's own, listed by --hydra-help.)
GROUPS = {
    "model": "the model that is post-trained and evaluated",
    "dataset": "the task: training and test problems, prompt format, answer checking",
    "algorithm": "the post-training method",
    "decoder": "how the test answers are generated",
    "engine": "the generation engine of every stage that generates",
    "logger": "where each job is logged besides its results.json",
    "experiment": "a preset that sets several keys at once",
    "sweeps": "what `-m` runs: a sweep file (python -m framework -m sweeps=<name>)",
    "hydra/launcher": "where the jobs of a sweep run (default: one after another in this process)",
}
# Options of hydra/launcher that Hydra and its plugins register and the two presets build on: not listed.
HIDDEN_OPTIONS = {"hydra/launcher": {"basic", "submitit_local", "submitit_slurm"}}


def _loader():
    from hydra.core.global_hydra import GlobalHydra

    return GlobalHydra.instance().config_loader()


def options(group: str, loader=None) -> list[str]:
    """The selectable options of `group`: every option the config loader finds, except schemas. The sweeps sit
    in the top-level sweeps/, on the primary config's search path, which --help's loader does not apply: they
    are read from there."""
    from framework.paths import SWEEPS_DIR

    if group == "sweeps":
        return sorted(path.stem for path in SWEEPS_DIR.glob("*.yaml"))
    found = (loader or _loader()).get_group_options(group)
    return [name for name in found if not name.endswith(SCHEMA_SUFFIX)
            and name not in HIDDEN_OPTIONS.get(group, ())]


def _first_comment_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("#").strip()
        if line and not line.startswith("#"):
            break
    return ""


def description(group: str, option: str, loader=None) -> str:
    """The first comment line of the option's YAML; for an option registered from code, its schema's docstring."""
    path = f"{group}/{option}"
    if group == "sweeps":
        from framework.paths import SWEEPS_DIR

        return _first_comment_line((SWEEPS_DIR / f"{option}.yaml").read_text())
    for source in (loader or _loader()).get_sources():
        if not source.is_config(path):
            continue
        if source.scheme() == "file":
            file = Path(source.path) / f"{path}.yaml"
            return _first_comment_line(file.read_text()) if file.is_file() else ""
        if source.scheme() == "structured":
            node = source.load_config(path).config
            schema = OmegaConf.get_type(node)
            doc = (getattr(schema, "__doc__", None) or "").strip()
            generated = doc.startswith(f"{getattr(schema, '__name__', '')}(")  # a dataclass's own signature
            return "" if generated else doc.splitlines()[0]
        return ""
    return ""


def help_text() -> str:
    """The groups and options block of --help (the `framework_help` resolver)."""
    from hydra.core.hydra_config import HydraConfig

    loader = _loader()
    try:
        choices = dict(HydraConfig.get().runtime.choices)
    except ValueError:  # no Hydra run: nothing is chosen
        choices = {}
    listed = {group: options(group, loader) for group in GROUPS}
    width = max(len(name) for names in listed.values() for name in names)
    lines = []
    for group, about in GROUPS.items():
        names = listed[group]
        if not names:
            continue
        lines.append(f"{group}: {about}")
        for name in names:
            mark = "*" if choices.get(group) == name else " "
            lines.append(f"  {mark} {name.ljust(width)}  {description(group, name, loader)}".rstrip())
        lines.append("")
    # string.Template renders the help text: a literal $ must be doubled
    return "\n".join(lines).rstrip().replace("$", "$$")


def register_resolver() -> None:
    OmegaConf.register_new_resolver("framework_help", help_text, replace=True, use_cache=False)


def refuse_schema_choices(choices: dict, loader=None) -> None:
    """ConfigError when a group's chosen option is a schema (`algorithm=sft_schema`): schemas are the typed
    building blocks the YAMLs extend, and choosing one silently drops its option's and its presets' values."""
    for group, choice in choices.items():
        if isinstance(choice, str) and choice.endswith(SCHEMA_SUFFIX):
            available = ", ".join(options(group.split("@")[0], loader))  # dataset@evaluation.datasets.x: dataset's
            raise ConfigError(f"{group}={choice}: a schema, not an option; available: {available}")
