"""Resuming picks the newest checkpoint that was completely written."""
import json

from framework.algorithms.training import last_complete_checkpoint


def _checkpoint(root, step, complete=True, state_text=None):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        (path / "trainer_state.json").write_text(state_text or json.dumps({"global_step": step}))
    return path


def test_no_directory_or_no_checkpoints_means_start_from_scratch(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") is None
    (tmp_path / "runs").mkdir()
    assert last_complete_checkpoint(tmp_path) is None


def test_newest_by_step_number_not_by_name(tmp_path):
    _checkpoint(tmp_path, 5)
    _checkpoint(tmp_path, 40)
    _checkpoint(tmp_path, 100)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-100")


def test_a_checkpoint_killed_mid_save_is_skipped_and_removed(tmp_path):
    _checkpoint(tmp_path, 5)
    partial = _checkpoint(tmp_path, 10, complete=False)
    truncated = _checkpoint(tmp_path, 15, state_text='{"global_st')
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-5")
    assert not partial.exists() and not truncated.exists()


def test_only_partial_checkpoints_means_start_from_scratch(tmp_path):
    _checkpoint(tmp_path, 10, complete=False)
    assert last_complete_checkpoint(tmp_path) is None
