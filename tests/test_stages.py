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
