import threading
import time

from framework.stages import StageStore, stage_key


def test_key_depends_on_kind_and_spec_only():
    assert stage_key("sft", {"a": 1, "b": 2}) == stage_key("sft", {"b": 2, "a": 1})
    assert stage_key("sft", {"a": 1}) != stage_key("sft", {"a": 2})
    assert stage_key("sft", {"a": 1}) != stage_key("dpo", {"a": 1})


def test_commit_reuse_and_recompute(tmp_path):
    store = StageStore(tmp_path)
    with store.open("kind", {"x": 1}) as stage:
        assert not stage.done
        (stage.new_output_dir() / "weights").write_text("v1")
        stage.checkpoints.mkdir()
        stage.commit({"note": "first"})
    with store.open("kind", {"x": 1}) as stage:
        assert stage.done and (stage.output / "weights").read_text() == "v1"
        assert stage.metadata()["note"] == "first" and not stage.checkpoints.exists()
    with StageStore(tmp_path, reuse=False).open("kind", {"x": 1}) as stage:
        assert not stage.done  # reuse=false clears the finished stage


def test_an_uncommitted_stage_is_not_done(tmp_path):
    with StageStore(tmp_path).open("kind", {}) as stage:
        (stage.new_output_dir() / "half").write_text("interrupted here")
    with StageStore(tmp_path).open("kind", {}) as stage:
        assert not stage.done


def test_concurrent_users_of_one_stage_compute_it_once(tmp_path):
    computed = []

    def job():
        with StageStore(tmp_path).open("kind", {"same": True}) as stage:
            if not stage.done:
                computed.append(1)
                time.sleep(0.2)
                (stage.new_output_dir() / "w").write_text("x")
                stage.commit()

    threads = [threading.Thread(target=job) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert computed == [1]


def test_compute_spent_lists_shared_stages_without_summing_them(tmp_path):
    store = StageStore(tmp_path)
    for kind, shared, tokens in (("base", True, 1000), ("method", False, 30), ("evaluation", True, 7)):
        with store.open(kind, {}, shared=shared) as stage:
            stage.new_output_dir()
            stage.commit({"compute": {"train_tokens": tokens, "generated_tokens": tokens}})
    spent = store.compute_spent()
    assert spent["train_tokens"] == 30 and spent["sampling_generated_tokens"] == 30
    assert [entry["kind"] for entry in spent["stages"]] == ["base", "method", "evaluation"]
    assert "shared" not in spent["stages"][0]  # the ledger's entries are the stages' own records
    assert store.compute_spent(spent["stages"][:1])["train_tokens"] == 0  # the sums follow the entries given


# ---------------------------------------------------------------------------- code fingerprints
import ast  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from framework.stages import PACKAGE_ROOT, code_closure, code_fingerprint  # noqa: E402


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the framework package to edit; the fingerprints read it instead of the installed one."""
    shutil.copytree(PACKAGE_ROOT / "framework", tmp_path / "framework",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code_closure.cache_clear()
    yield tmp_path
    code_closure.cache_clear()


def _edit(root: Path, module: str, line: str = "\n# an edit\n") -> None:
    path = root.joinpath(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + line)
    code_closure.cache_clear()


STAGES = {"sft": "framework.algorithms.sft_stage", "soc": "framework.algorithms.soc",
          "rationales": "framework.algorithms.rationales", "self_explore": "framework.algorithms.self_explore",
          "dpo": "framework.algorithms.dpo"}


def _fingerprints(root: Path) -> dict[str, str]:
    return {stage: code_fingerprint(module, root) for stage, module in STAGES.items()}


@pytest.mark.parametrize("edited, changed", [
    ("framework.algorithms.soc", {"soc"}),  # a loss edit retrains that method only
    ("framework.algorithms.sft_stage", {"sft", "soc", "self_explore"}),  # SOC and RFT train with its trainer
    ("framework.algorithms.sft", set()),  # the sft plugin only registers the shared stage
    ("framework.algorithms.training", {"sft", "soc", "self_explore", "dpo"}),  # every trainer's arguments
    ("framework.algorithms.rationales", {"rationales", "self_explore"}),  # the rules the family shares
    ("framework.decoding", {"rationales", "self_explore", "dpo"}),  # the samplers
    ("framework.report.__init__", set()), ("framework.report.sweep", set()), ("framework.report.plots", set()),
    ("framework.results", set()),  # nothing trained reads the report or the results record
    ("framework.algorithms.xpo", set()),  # another method
    ("framework.stages", set()),  # storage, not computation
])
def test_a_stage_key_follows_the_code_that_computes_it_and_nothing_else(package_copy, edited, changed):
    before = _fingerprints(package_copy)
    _edit(package_copy, edited)
    after = _fingerprints(package_copy)
    assert {stage for stage in STAGES if before[stage] != after[stage]} == changed


def test_type_checking_imports_are_not_followed(package_copy):
    closure = code_closure(("framework.algorithms.sft_stage",), package_copy)
    # AlgorithmContext names TaskData for type checking only
    assert "framework.data.task" not in closure and "framework.data.loaders" not in closure
    assert "framework.algorithms.sft_stage" in closure and "framework.algorithms.training" in closure


def test_store_puts_the_code_fingerprint_in_the_spec(tmp_path):
    store = StageStore(tmp_path)
    with store.open("kind", {"x": 1}, code="framework.algorithms.sft") as stage:
        assert stage.spec == {"x": 1, "code": code_fingerprint("framework.algorithms.sft")}
    with store.open("kind", {"x": 1}, code="framework.algorithms.soc") as other:
        assert other.key != stage.key


def test_every_stage_the_framework_opens_names_its_code():
    """A call site without `code=` would key its stage on the spec alone: edits to its code would reuse it."""
    missing, seen = [], 0
    for path in (PACKAGE_ROOT / "framework").rglob("*.py"):
        if path.name == "stages.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _opens_a_stage(node.func):
                seen += 1
                if not any(keyword.arg == "code" for keyword in node.keywords):
                    missing.append(f"{path.relative_to(PACKAGE_ROOT)}:{node.lineno}")
    assert seen >= 15  # the check looks at the call sites (each method's training, samplers, evaluation)
    assert not missing, missing


def _opens_a_stage(func) -> bool:
    """`stages.open(...)` / `ctx.stages.open(...)`, or the helpers that open one for their caller."""
    if isinstance(func, ast.Name):
        return func.id in ("stored_records", "generated_records", "train_in_stage", "train_dpo")
    if isinstance(func, ast.Attribute) and func.attr == "open":
        target = func.value
        return (target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")) == "stages"
    return False
