"""The W&B dashboard: built offline with wandb-workspaces, panels for the report's views, filtered to the
sweep's group; saved only when online and asked."""
import json

import pytest

pytest.importorskip("wandb_workspaces")

import wandb_workspaces.workspaces as ws  # noqa: E402

from framework.dashboard import bon_sizes_from_sweep, build_workspace, main, workspace_spec  # noqa: E402
from framework.results import JobResult  # noqa: E402


def _panels(workspace):
    return {section.name: section.panels for section in workspace.sections}


def test_workspace_has_the_report_views_and_the_group_filter():
    workspace = build_workspace("2026-11-24_12-00-00", entity="team", project="proj", bon_sizes=(1, 2, 4))
    assert (workspace.entity, workspace.project) == ("team", "proj")
    panels = _panels(workspace)
    assert list(panels) == ["Accuracy by method x decoder", "Accuracy vs beam width", "Best-of-N accuracy vs N",
                            "Accuracy vs compute"]
    assert panels["Accuracy by method x decoder"][0].metrics == ["eval/accuracy"]
    assert panels["Accuracy vs beam width"][0].x.name == "decoder.num_beams"
    assert panels["Best-of-N accuracy vs N"][0].metrics == [f"eval/bon_accuracy_by_n.{n}" for n in (1, 2, 4)]
    assert panels["Best-of-N accuracy vs N"][0].groupby.name == "decoder.selector"
    assert [p.x.name for p in panels["Accuracy vs compute"]] == ["compute/train_tokens", "eval/generated_tokens",
                                                                  "Runtime"]
    assert workspace.runset_settings.filters == "Metric(\"Group\") == '2026-11-24_12-00-00'"


def test_workspace_spec_serialises_offline():
    spec = workspace_spec(build_workspace("my-sweep", entity="team"))
    runset = spec["spec"]["section"]["runSets"][0]
    assert runset["filters"]["filters"] == [{"key": {"section": "run", "name": "group"}, "op": "=",
                                             "value": "my-sweep", "disabled": False}]
    assert [g["name"] for g in runset["grouping"]] == ["method.value", "decoder_label.value"]  # survive agents
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    assert sum(len(section["panels"]) for section in sections) == 10
    scatter = sections[1]["panels"][0]["config"]
    assert (scatter["xAxis"], scatter["yAxis"]) == ("config:decoder.value.num_beams", "summary:eval/accuracy")


def test_bon_sizes_come_from_the_sweep_results(tmp_path):
    for name, curve in (("a", {"1": 0.1, "2": 0.2}), ("b", {"1": 0.1, "4": 0.3})):
        (tmp_path / name).mkdir()
        JobResult(algorithm="none", decoder="bon", decoder_label="bon", dataset="arith", model="tiny", seed=0,
                  metrics={"bon_accuracy_by_n": curve}).write(tmp_path / name / "results.json")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text('{"metr')  # a job killed mid-write is skipped
    assert bon_sizes_from_sweep(tmp_path) == (1, 2, 4)


def test_cli_saves_only_online_and_when_asked(tmp_path, monkeypatch, capsys):
    saved = []
    monkeypatch.setattr(ws.Workspace, "save", lambda self: saved.append(self.name) or self)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["g1", "--entity", "team", "--spec-out", str(tmp_path / "spec.json")]) == 0
    assert saved == [] and json.loads((tmp_path / "spec.json").read_text())["displayName"] == "Comparison: g1"
    assert main(["g1", "--entity", "team", "--save"]) == 2 and saved == []
    assert "needs W&B online" in capsys.readouterr().err
    monkeypatch.setenv("WANDB_MODE", "online")
    assert main(["g1", "--entity", "team", "--save"]) == 0 and saved == ["Comparison: g1"]


@pytest.mark.parametrize("arguments, message", [
    (["--sweep-dir", "{tmp}/nope"], "error: --sweep-dir {tmp}/nope is not a directory"),
    (["--sweep-dir", "{tmp}"], "error: --sweep-dir {tmp} holds no job's results.json"),
    (["--spec-out", "{tmp}/no/such/spec.json"], "error: --spec-out {tmp}/no/such/spec.json: no directory"),
    (["--spec-out", "{tmp}"], "error: --spec-out {tmp} is a directory"),
    (["--entity", ""], "error: --entity: empty name"),
    (["--saev"], "error: unrecognized arguments: --saev"),
])
def test_dashboard_arguments_that_name_nothing_are_refused_in_one_line(tmp_path, capsys, arguments, message):
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    try:
        code = main(["g1", "--entity", "team", *arguments])
    except SystemExit as error:  # argparse's own refusals exit
        code = error.code
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured.out
    assert captured.err.startswith(message.replace("{tmp}", str(tmp_path))) and captured.err.count("\n") == 1, \
        captured.err
