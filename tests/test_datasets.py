"""The benchmark dataset options: loading from ../shared/data, splits and sizes, prompt formats, chat
rendering, row errors that name file:line, and GAOKAO (evaluation only) end to end on the tiny model."""
import json
from pathlib import Path

import pytest

from conftest import FAST
from test_integration import recompute_scores
from framework import registry
from framework.config import to_validated
from framework.data.answers import GaokaoAnswerChecker, LetterAnswerChecker, MathAnswerChecker, NumericAnswerChecker
from framework.errors import ConfigError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
GAOKAO = FIXTURES / "gaokao2023en_sample.jsonl"
LOCAL = {"gsm8k": DATA / "gsm8k", "math": DATA / "math", "math500": DATA / "math", "prontoqa": DATA / "prontoqa",
         "gaokao2023en": GAOKAO}


def load(compose_cfg, name, *overrides, path=None):
    cfg = compose_cfg([f"dataset={name}", f"dataset.path={path or LOCAL[name]}", "logger=none", *overrides])
    config = to_validated(cfg).dataset
    return registry.datasets.get(name)(config), config


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# ---------------------------------------------------------------------------- every option loads
@pytest.mark.parametrize("name, checker, completion", [
    ("gsm8k", NumericAnswerChecker, True), ("math", MathAnswerChecker, True), ("math500", MathAnswerChecker, True),
    ("prontoqa", LetterAnswerChecker, True), ("gaokao2023en", GaokaoAnswerChecker, False),
])
def test_each_option_loads_local_files_with_the_right_columns(compose_cfg, name, checker, completion):
    data, _ = load(compose_cfg, name, "dataset.train_size=4", "dataset.test_size=3")
    expected = ["question", "prompt", "completion", "gold_answer"] if completion else ["question", "prompt", "gold_answer"]
    assert data.test.column_names == expected and len(data.test) == 3
    assert data.train.column_names == expected and len(data.train) == (0 if name == "gaokao2023en" else 4)
    assert isinstance(data.checker, checker) and data.prompt_format in ("zero_shot", "few_shot")
    if completion:  # every demonstration ends in what the strict reading of its own checker accepts
        for row in [*data.train, *data.test]:
            verdict = data.checker.check(row["completion"], row["gold_answer"])
            assert verdict.correct, (name, row["completion"][-80:], row["gold_answer"])


def test_gsm8k_rows_match_the_file(compose_cfg):
    data, _ = load(compose_cfg, "gsm8k", "dataset.test_size=2")
    first = json.loads((DATA / "gsm8k/test.jsonl").open().readline())
    assert data.test[0]["question"] == first["question"] and data.test[0]["gold_answer"] == "18"
    assert data.test[0]["prompt"] == f"Question: {first['question']}\nAnswer:"
    assert data.test[0]["completion"] == " " + first["answer"]  # target_delimiter, then the solution
    assert len(data.train) == 7473


def test_math500_gold_is_the_answer_field_and_training_rows_are_math_train(compose_cfg):
    data, _ = load(compose_cfg, "math500", "dataset.test_size=5", "dataset.train_size=3")
    rows = [json.loads(line) for line in (DATA / "math/math500_test.jsonl").open()][:5]
    assert data.test["gold_answer"] == [row["answer"] for row in rows]
    assert data.test["question"] == [row["problem"] for row in rows]
    first_train = json.loads((DATA / "math/train.jsonl").open().readline())
    assert data.train[0]["question"] == first_train["problem"]


def test_math_rows_without_an_answer_are_skipped_by_default_or_fail_naming_the_line(compose_cfg, caplog):
    data, _ = load(compose_cfg, "math", "dataset.test_size=1")
    assert len(data.train) == 7500 - 2  # train.jsonl:5530 and :5532 have an empty \boxed{}
    assert "train.jsonl:5530" in caplog.text and "train.jsonl:5532" in caplog.text
    with pytest.raises(ConfigError, match=r"train\.jsonl:5530: no \\boxed\{\} with an answer in the solution"):
        load(compose_cfg, "math", "dataset.rows_without_answer=error")


def test_prontoqa_one_file_splits_into_disjoint_test_and_training_rows(compose_cfg):
    data, config = load(compose_cfg, "prontoqa", "dataset.prompt_format=zero_shot")
    rows = [json.loads(line) for line in (DATA / "prontoqa/dev.jsonl").open()]
    assert config.test_size == 200 and len(data.test) == 200 and len(data.train) == 300
    assert data.test["gold_answer"] == [row["answer"] for row in rows[:200]]
    assert set(data.test["question"]).isdisjoint(data.train["question"])
    assert data.test[0]["completion"].endswith("Max is not sour.\nThe answer is B.")
    assert data.checker.option_words == {"true": "A", "false": "B"} and data.checker.letters == "AB"
    everything, _ = load(compose_cfg, "prontoqa", "dataset.prompt_format=zero_shot", "dataset.test_size=null")
    assert (len(everything.test), len(everything.train)) == (500, 0)


# ---------------------------------------------------------------------------- prompt formats
def test_few_shot_exemplars_are_the_first_training_rows_and_leave_the_training_split(compose_cfg):
    zero, _ = load(compose_cfg, "gsm8k", "dataset.test_size=2", "dataset.train_size=5")
    few, _ = load(compose_cfg, "gsm8k", "dataset.test_size=2", "dataset.train_size=5", "dataset.prompt_format=few_shot",
                  "dataset.few_shot_examples=2")
    train_rows = [json.loads(line) for _, line in zip(range(8), (DATA / "gsm8k/train.jsonl").open())]
    block = "".join(f"Question: {row['question']}\nAnswer: {row['answer']}\n\n" for row in train_rows[:2])
    assert few.test[0]["prompt"] == block + zero.test[0]["prompt"]
    assert few.train["question"] == [row["question"] for row in train_rows[2:7]]  # exemplars removed
    assert few.fingerprint != zero.fingerprint


def test_few_shot_needs_enough_training_rows(compose_cfg):
    with pytest.raises(ConfigError, match="dataset.few_shot_examples: 3 exemplars need as many training rows"):
        load(compose_cfg, "prontoqa", "dataset.test_size=499")


def test_gaokao_is_evaluation_only(compose_cfg):
    with pytest.raises(ConfigError, match="dataset.prompt_format few_shot draws its exemplars from the training"):
        load(compose_cfg, "gaokao2023en", "dataset.prompt_format=few_shot")
    data, _ = load(compose_cfg, "gaokao2023en")
    assert len(data.train) == 0 and not data.has_demonstrations and len(data.test) == 14
    assert "put your final answer within \\boxed{}" in data.test[0]["prompt"]


def _chat_tokenizer():
    from framework import tiny

    tokenizer = tiny.build_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    return tokenizer


def test_chat_prompts_hold_the_user_message_until_rendered_with_the_chat_template(compose_cfg):
    data, _ = load(compose_cfg, "math", "dataset.prompt_format=chat", "dataset.test_size=2", "dataset.train_size=2",
                   "dataset.system_prompt=Be brief.")
    question = data.test[0]["question"]
    message = f"{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    assert data.test[0]["prompt"] == message
    assert data.test[0]["completion"].startswith("The denominator")  # the bare solution: the assistant turn
    rendered = data.render_prompts(_chat_tokenizer())
    assert rendered.test[0]["prompt"] == f"<system>Be brief.</system><user>{message}</user><assistant>"
    assert rendered.train[0]["prompt"].endswith("</user><assistant>")
    assert rendered.test["completion"] == data.test["completion"] and rendered.chat_rendered
    assert rendered.render_prompts(_chat_tokenizer()) is rendered  # idempotent
    assert "chat_template" in rendered.fingerprint and rendered.fingerprint != data.fingerprint
    assert rendered.without_labels().test.column_names == ["question", "prompt"]


def test_chat_without_a_chat_template_is_a_config_error_and_other_formats_need_none(compose_cfg):
    from framework import tiny

    data, _ = load(compose_cfg, "gsm8k", "dataset.prompt_format=chat", "dataset.test_size=1", "dataset.train_size=1")
    with pytest.raises(ConfigError, match="dataset.prompt_format=chat needs a tokenizer with a chat template"):
        data.render_prompts(tiny.build_tokenizer())
    plain, _ = load(compose_cfg, "gsm8k", "dataset.test_size=1", "dataset.train_size=1")
    assert plain.render_prompts(tiny.build_tokenizer()) is plain


def test_chat_rendering_drops_a_bos_the_tokenizer_adds_anyway():
    from framework.data.prompts import chat_renderer

    class Tokenizer:  # a template that writes BOS itself, and a tokenizer that prepends it too (Llama 3)
        chat_template, bos_token, bos_token_id = "...", "<s>", 1

        def __call__(self, text):
            return {"input_ids": [1, 5]}

        def apply_chat_template(self, turns, add_generation_prompt, tokenize):
            return "<s>" + "".join(t["content"] for t in turns) + "|assistant|"

    assert chat_renderer(Tokenizer(), None)("hi") == "hi|assistant|"


# ---------------------------------------------------------------------------- bad rows and paths
@pytest.mark.parametrize("name, rows, expected", [
    ("gsm8k", ['{"question": "q", "answer": "#### 1"}', '{"question": "q", '], r"test.jsonl:2: not valid JSON"),
    ("gsm8k", ['["q", "a"]'], r"test.jsonl:1: a row must be a JSON object"),
    ("gsm8k", [{"question": "q", "answer": "no mark"}], r"test.jsonl:1: the answer has no final '#### <number>'"),
    ("math", [{"problem": "p", "solution": "s \\boxed{1}"}, {"problem": "p"}], r"test.jsonl:2: row has no 'solution'"),
    ("math", [{"problem": "p", "solution": "it is 4"}], r"test.jsonl:1: no \\boxed\{\} with an answer in the solution"),
    ("math", [{"problem": 3, "solution": "\\boxed{1}"}], r"test.jsonl:1: row has no 'problem'"),
    ("gaokao2023en", [{"question": "q", "answer": "1"}, {"question": "q"}], r"test.jsonl:2: row has no 'answer'"),
    ("prontoqa", [{"context": "c", "question": "q", "options": ["A) True", "B) False"], "answer": "C",
                   "explanation": ["s"]}], r"test.jsonl:1: answer 'C' is not one of the option letters \['A', 'B'\]"),
    ("prontoqa", [{"context": "c", "question": "q", "options": ["True", "False"], "answer": "A",
                   "explanation": ["s"]}], r"test.jsonl:1: option 'True' does not start with a letter"),
    ("prontoqa", [{"context": "c", "question": "q", "options": ["A) True", "B) False"], "answer": "A",
                   "explanation": "s"}], r"test.jsonl:1: 'explanation' must be a non-empty list"),
])
def test_malformed_rows_fail_naming_file_and_line(compose_cfg, tmp_path, name, rows, expected):
    write_jsonl(tmp_path / "test.jsonl", rows)
    with pytest.raises(ConfigError, match=expected):
        load(compose_cfg, name, "dataset.prompt_format=zero_shot", "dataset.train_file=null",
             "dataset.rows_without_answer=error", "dataset.test_file=test.jsonl", path=tmp_path)


def test_bad_paths_name_the_key(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match="dataset.path: no such file or directory '/no/such/place'"):
        load(compose_cfg, "gsm8k", path="/no/such/place")
    write_jsonl(tmp_path / "test.jsonl", [{"question": "q", "answer": "#### 1"}])
    with pytest.raises(ConfigError, match="dataset.train_file: no file 'train.jsonl' in dataset.path"):
        load(compose_cfg, "gsm8k", path=tmp_path)
    write_jsonl(tmp_path / "test.jsonl", [{"question": "q", "answer": "no final answer"}])
    with pytest.raises(ConfigError, match="no test rows left"):
        load(compose_cfg, "gsm8k", "dataset.train_file=null", "dataset.rows_without_answer=skip", path=tmp_path)
    (tmp_path / "empty").mkdir()
    write_jsonl(tmp_path / "empty" / "test.jsonl", [])
    with pytest.raises(ConfigError, match="test.jsonl: no rows"):
        load(compose_cfg, "gsm8k", "dataset.train_file=null", path=tmp_path / "empty")


def test_a_hub_name_offline_is_a_config_error(compose_cfg):
    cfg = compose_cfg(["dataset=gsm8k", "dataset.hub_name=nobody/no-such-dataset-xyz", "logger=none"])
    with pytest.raises(ConfigError, match="dataset.hub_name: could not load 'nobody/no-such-dataset-xyz'"):
        registry.datasets.get("gsm8k")(to_validated(cfg).dataset)


def test_an_unseen_gaokao_file_of_the_stated_format_loads_as_one_file(compose_cfg, tmp_path):
    """A single JSONL file (the test split): extra fields ignored, numbers as answers accepted."""
    file = write_jsonl(tmp_path / "GAOKAO-2023-english.jsonl", [
        {"question": "Compute $1+1$.", "answer": 2, "source": "gaokao", "lang": "en", "id": 7},
        {"question": "Which is prime? ( ) A. 4 B. 6 C. 7 D. 9", "answer": "C", "source": "gaokao", "lang": "en"},
        {"question": "Solve $x^2=4$ for $x>0$.", "answer": "$x=2$"},
    ])
    data, _ = load(compose_cfg, "gaokao2023en", path=file)
    assert data.test["gold_answer"] == ["2", "C", "$x=2$"] and len(data.train) == 0
    outputs = ["\\boxed{2}", "The answer is \\boxed{C}.", "so $\\boxed{2}$"]
    assert [data.checker.check(o, g).correct for o, g in zip(outputs, data.test["gold_answer"])] == [True] * 3


@pytest.mark.parametrize("name, row", [
    ("gaokao2023en", {"question": "q", "answer": ""}),  # as GAOKAO2023-En's rows 168 and 193 are
    ("gaokao2023en", {"question": "q", "answer": "  "}),
    ("math500", {"problem": "p", "solution": "so \\boxed{3}", "answer": ""}),
])
def test_rows_with_an_empty_gold_are_dropped_counted_and_named(compose_cfg, tmp_path, caplog, name, row):
    good = {"question": "q", "answer": "$2$ or $-2$"} if name == "gaokao2023en" else \
        {"problem": "p", "solution": "\\boxed{1}", "answer": "1"}
    file = write_jsonl(tmp_path / "test.jsonl", [good, row, good])
    with caplog.at_level("WARNING"):
        data, _ = load(compose_cfg, name, "dataset.train_file=null", "dataset.prompt_format=zero_shot", path=file)
    assert len(data.test) == 2 and data.dropped_empty_gold == 1 and "" not in data.test["gold_answer"]
    assert "dropped 1 test rows whose gold answer is empty (" + f"{file}:2)" in caplog.text
    write_jsonl(file, [row])
    with pytest.raises(ConfigError, match="no test rows left"):
        load(compose_cfg, name, "dataset.train_file=null", "dataset.prompt_format=zero_shot", path=file)


def test_datasets_without_empty_golds_drop_nothing(compose_cfg):
    data, _ = load(compose_cfg, "math500", "dataset.train_size=4")
    assert data.dropped_empty_gold == 0 and len(data.test) == 500


# ---------------------------------------------------------------------------- end to end
def test_gaokao_fixture_evaluates_end_to_end_on_the_tiny_model(compose_cfg, shared_cache, tmp_path):
    from framework.job import run

    rows = [json.loads(line) for line in GAOKAO.open()]
    rows.insert(2, {"question": "A row whose gold is empty.", "answer": "", "source": "gaokao", "lang": "en"})
    file = write_jsonl(tmp_path / "gaokao.jsonl", rows)
    overrides = ["dataset=gaokao2023en", f"dataset.path={file}", "algorithm=none", "decoder=greedy",
                 *[o for o in FAST if not o.startswith("dataset.train_size")]]  # test_size 6: five scored
    results = run(compose_cfg(overrides, shared_cache), tmp_path / "run")
    metrics = results["metrics"]
    assert metrics["num_problems"] == 5 and metrics["dropped_empty_gold"] == 1
    assert metrics["accuracy"] <= metrics["accuracy_flexible"]
    recompute_scores(tmp_path / "run", GaokaoAnswerChecker())  # letter golds as multiple choice, the rest math
    records = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").open()]
    assert [r["gold"] for r in records] == [row["answer"] for row in rows[:6] if row["answer"]]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["dataset"] == "gaokao2023en" and saved["metrics"]["dropped_empty_gold"] == 1


def test_a_few_shot_exemplar_without_a_solution_is_named(compose_cfg, tmp_path):
    row = {"context": "c", "question": "q", "options": ["A) True", "B) False"], "answer": "A"}
    write_jsonl(tmp_path / "dev.jsonl", [{**row, "explanation": ["s"]}, row, {**row, "explanation": ["t"]}])
    with pytest.raises(ConfigError, match=r"dev.jsonl:2: this few-shot exemplar .* has no worked solution"):
        load(compose_cfg, "prontoqa", "dataset.test_size=1", "dataset.few_shot_examples=2", path=tmp_path)
    data, _ = load(compose_cfg, "prontoqa", "dataset.test_size=1", "dataset.prompt_format=zero_shot", path=tmp_path)
    assert "completion" not in data.train.column_names and "completion" in data.test.column_names


def test_a_chat_template_that_refuses_a_system_turn_is_a_config_error():
    from framework.data.prompts import chat_renderer

    tokenizer = _chat_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                               "{{ raise_exception('no system role') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ConfigError, match=r"chat template failed on \['system', 'user'\] turns .*no system role"):
        chat_renderer(tokenizer, "Be brief.")("hi")
    assert chat_renderer(tokenizer, None)("hi") == "hi"


@pytest.mark.parametrize("algorithm", ["sft", "dpo"])
def test_training_on_an_evaluation_only_dataset_is_refused_before_any_model_is_built(compose_cfg, tmp_path, algorithm):
    from framework.job import run

    cfg = compose_cfg([f"algorithm={algorithm}", "dataset=gaokao2023en", f"dataset.path={GAOKAO}", "logger=none"],
                      tmp_path / "cache")
    with pytest.raises(ConfigError, match=f"algorithm={algorithm} trains, but dataset=gaokao2023en has no training"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists()  # nothing built, nothing trained
