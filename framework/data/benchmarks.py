"""Real benchmarks: `dataset=gsm8k | math | math500 | gaokao2023en | prontoqa`.

Each option reads its rows from local JSONL files (`path`) or, when `path` is null, from the Hugging
Face hub, turns every row into (question, demonstration, gold answer) with errors that name the file
and line, applies the sizes and the prompt format (prompts.py), and returns a TaskData with the
family's answer checker. Row formats:

    gsm8k         question, answer ("... #### 72")                      gold: the number after ####
    math          problem, solution (ends in \\boxed{...})             gold: the last \\boxed{} content
    math500       problem, solution, answer                              gold: answer
    gaokao2023en  question, answer (often LaTeX in $...$, or a letter), source, lang    no demonstration
    prontoqa      context, question, options ["A) True", ...], answer (a letter), explanation (steps)

Splits. `path` is a directory holding `train_file` and `test_file`, or one JSONL file, used as the test
split (no training split then). When the training and test sources are the same file or hub split
(ProntoQA's dev.jsonl), the first `test_size` rows are the test split and the rest the training split,
so the two never overlap. `validation_size` takes the last N rows of the training split as the validation split
(they leave training); then `train_size` / `test_size` keep the first N rows. With prompt_format=few_shot
the first `few_shot_examples` training rows are the exemplars and are removed from the training split.
An evaluation-only dataset (GAOKAO) gets an empty training split with the same columns; a split whose
rows have no demonstrations has no `completion` column.

Empty golds. A row whose gold answer field is there but empty (two GAOKAO2023-En rows have `"answer": ""`)
has nothing to be scored against: it is dropped from both splits, with a warning naming it, and the number
dropped from the test split is `TaskData.dropped_empty_gold` (results.json's `dropped_empty_gold`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from datasets import Dataset, Features, Value

from framework import registry
from framework.config import DatasetConfig, require
from framework.data import answers
from framework.data.answers import (GaokaoAnswerChecker, LetterAnswerChecker, MathAnswerChecker,
                                    NumericAnswerChecker, extract_strict, last_boxed)
from framework.data.task import TaskData, carve_validation
from framework.data.prompts import PROMPT_FORMATS, few_shot_block, few_shot_stop, fill
from framework.errors import ConfigError

log = logging.getLogger(__name__)

# Bump when a change here alters the rows a config produces: cached stages keyed on the data go stale.
LOADER_VERSION = 1
PRONTOQA_ANSWER_LINE = "The answer is {letter}."  # ends every ProntoQA demonstration; the letter checker reads it


# ---------------------------------------------------------------------------- config
@dataclass
class BenchmarkConfig(DatasetConfig):
    """Keys every benchmark shares; each option's YAML documents its defaults."""

    path: str | None = None  # a directory with train_file / test_file, or one JSONL file (the test split)
    train_file: str | None = "train.jsonl"  # inside `path`; null: no training split
    test_file: str = "test.jsonl"  # inside `path`; the same name as train_file: one file split in two
    hub_name: str = ""  # the hub dataset used when `path` is null (needs network or the HF cache)
    hub_config: str | None = None
    hub_revision: str | None = None  # a commit or tag to pin; null: the newest
    hub_train_split: str | None = "train"  # null: no training split
    hub_test_split: str = "test"
    hub_train_name: str | None = None  # the training split from another hub dataset; null: hub_name
    hub_train_config: str | None = None  # its config (used only with hub_train_name)
    prompt_format: str = "zero_shot"  # zero_shot | few_shot | chat
    few_shot_examples: int = 4  # exemplars for few_shot (the first N training rows; taken out of training)
    target_delimiter: str = " "  # between a prompt and its demonstration (lm-evaluation-harness's name)
    few_shot_separator: str = "\n\n"  # after each exemplar
    chat_user_template: str = "{question}"  # chat: the user message
    system_prompt: str | None = None  # chat: an optional system turn
    rows_without_answer: str = "error"  # error | skip (with a warning naming each file:line) rows whose gold
    #                                     answer cannot be read; malformed rows (bad JSON, missing fields) always fail

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.rows_without_answer in ("error", "skip"), f"{prefix}.rows_without_answer",
                "must be error or skip", self.rows_without_answer)
        require(self.prompt_format in PROMPT_FORMATS, f"{prefix}.prompt_format",
                f"must be one of {list(PROMPT_FORMATS)}", self.prompt_format)
        has_train = self.train_file if self.path is not None else self.hub_train_split
        require(self.prompt_format != "few_shot" or bool(has_train), f"{prefix}.prompt_format",
                "few_shot draws its exemplars from the training split, and this dataset has none "
                "(train_file / hub_train_split is null); use zero_shot or chat", self.prompt_format)
        require(self.few_shot_examples >= (1 if self.prompt_format == "few_shot" else 0),
                f"{prefix}.few_shot_examples", "must be >= 1 with prompt_format=few_shot (>= 0 otherwise)",
                self.few_shot_examples)
        require("{question}" in self.chat_user_template, f"{prefix}.chat_user_template",
                "must contain the placeholder {question}", self.chat_user_template)
        require(bool(self.test_file), f"{prefix}.test_file", "must name the test split's file", self.test_file)
        require(self.path is not None or bool(self.hub_name), f"{prefix}.path",
                "or hub_name must be set (a local copy or a hub dataset)", self.path)


@dataclass
class MathBenchmarkConfig(BenchmarkConfig):
    """Benchmarks whose answers math-verify compares (MATH, MATH-500, GAOKAO)."""

    check_timeout_seconds: int = 5  # math-verify limit per parse and per comparison (whole seconds: SIGALRM)
    max_new_tokens: int = 1024  # MATH-style solutions (the SOC and Self-Explore papers' length)

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.check_timeout_seconds >= 1, f"{prefix}.check_timeout_seconds", "must be >= 1",
                self.check_timeout_seconds)


MATH_CHAT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass
class GSM8KDatasetConfig(BenchmarkConfig):
    name: str = "gsm8k"
    hub_name: str = "openai/gsm8k"
    hub_config: str | None = "main"
    prompt_template: str = "Question: {question}\nAnswer:"
    few_shot_examples: int = 8
    chat_user_template: str = ("{question}\nSolve the problem step by step, then give the final answer on a last "
                               "line of the form \"#### <number>\".")


@dataclass
class MathDatasetConfig(MathBenchmarkConfig):
    name: str = "math"
    rows_without_answer: str = "skip"  # MATH train has two rows with an empty \boxed{} (train.jsonl:5530, 5532)
    hub_name: str = "DigitalLearningGmbH/MATH-lighteval"
    hub_config: str | None = "default"
    prompt_template: str = "Problem:\n{question}\n\nSolution:"
    chat_user_template: str = MATH_CHAT


@dataclass
class Math500DatasetConfig(MathDatasetConfig):
    name: str = "math500"
    test_file: str = "math500_test.jsonl"
    hub_name: str = "HuggingFaceH4/MATH-500"
    hub_config: str | None = None
    hub_train_name: str | None = "DigitalLearningGmbH/MATH-lighteval"  # MATH train: disjoint from MATH-500
    hub_train_config: str | None = "default"


@dataclass
class GaokaoDatasetConfig(MathBenchmarkConfig):
    name: str = "gaokao2023en"
    train_file: str | None = None  # evaluation only
    hub_name: str = "MARIO-Math-Reasoning/Gaokao2023-Math-En"
    hub_train_split: str | None = None
    hub_test_split: str = "train"  # the hub copy is one JSONL file, which `datasets` names "train"
    prompt_template: str = ("Question: {question}\nPlease reason step by step, and put your final answer within "
                            "\\boxed{}.\nAnswer:")
    chat_user_template: str = MATH_CHAT
    option_letters: str = "ABCDE"  # a gold made only of these letters is checked as multiple choice


@dataclass
class ProntoQADatasetConfig(BenchmarkConfig):
    name: str = "prontoqa"
    train_file: str | None = "dev.jsonl"
    test_file: str = "dev.jsonl"  # one file: the first test_size rows test, the rest train
    test_size: int | None = 200
    hub_name: str = "renma/ProntoQA"
    hub_train_split: str | None = "validation"
    hub_test_split: str = "validation"
    prompt_format: str = "few_shot"
    few_shot_examples: int = 3
    prompt_template: str = "{question}\nAnswer:"
    target_delimiter: str = "\n"
    chat_user_template: str = ("{question}\nReason step by step, one statement per line, then end with the line "
                               "\"The answer is X.\" where X is the letter of the correct option.")


# ---------------------------------------------------------------------------- rows
class MissingAnswer(ConfigError):
    """A well-formed row whose gold answer cannot be read (`rows_without_answer: skip` drops it)."""


class EmptyGold(Exception):
    """A row whose gold answer field is an empty string: always dropped and counted, never an error."""


@dataclass
class Problem:
    question: str
    demonstration: str | None  # a worked solution ending in its final-answer mark; None: the row has none
    gold: str
    options: dict[str, str] = field(default_factory=dict)  # multiple choice: letter -> option text
    where: str = ""  # file:line (or hub row) it came from, for errors


def _text(row: dict, key: str, where: str, required: bool = True) -> str | None:
    value = row.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: row has no '{key}' (a non-empty string; got {_show(value)})")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def gsm8k_problem(row: dict, where: str) -> Problem:
    question, answer = _text(row, "question", where), _text(row, "answer", where)
    gold = extract_strict(answer)
    if gold is None:
        raise MissingAnswer(f"{where}: the answer has no final '#### <number>' line: {answer[-80:]!r}")
    return Problem(question, answer, gold)


def math_problem(row: dict, where: str) -> Problem:
    """MATH rows; a ready `answer` (MATH-500) is the gold, else the solution's last \\boxed{}."""
    question = _text(row, "problem", where)
    given = row.get("answer")
    if isinstance(given, str) and not given.strip():
        raise EmptyGold(where)
    if given is not None and not (isinstance(given, (str, int, float)) and str(given).strip()):
        raise ConfigError(f"{where}: 'answer' must be a non-empty string (got {_show(given)})")
    solution = _text(row, "solution", where, required=given is None)
    boxed = last_boxed(solution) if solution is not None else None
    if given is None and boxed is None:
        raise MissingAnswer(f"{where}: no \\boxed{{}} with an answer in the solution (the gold answer is its "
                            f"last box; dataset.rows_without_answer=skip drops such rows): "
                          f"{solution[-80:]!r}")
    # a solution without a box would teach outputs the strict reading cannot score: no demonstration then
    return Problem(question, solution if boxed is not None else None,
                   str(given).strip() if given is not None else boxed)


def gaokao_problem(row: dict, where: str) -> Problem:
    question = _text(row, "question", where)
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if isinstance(answer, str) and not answer.strip():
        raise EmptyGold(where)
    if not isinstance(answer, str):
        raise ConfigError(f"{where}: row has no 'answer' (a non-empty string; got {_show(answer)})")
    return Problem(question, None, answer.strip())


_OPTION = re.compile(r"\s*\(?([A-Z])[).:]\s*(.*)", re.S)


def prontoqa_problem(row: dict, where: str) -> Problem:
    context, statement = _text(row, "context", where), _text(row, "question", where)
    options = row.get("options")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise ConfigError(f"{where}: 'options' must be a list of at least two strings like \"A) True\" "
                          f"(got {_show(options)})")
    letters = {}
    for option in options:
        match = _OPTION.fullmatch(option)
        if match is None:
            raise ConfigError(f"{where}: option {option!r} does not start with a letter such as \"A) \"")
        letters[match.group(1)] = match.group(2).strip()
    answer = _text(row, "answer", where).strip()
    if answer not in letters:
        raise ConfigError(f"{where}: answer {answer!r} is not one of the option letters {sorted(letters)}")
    steps = row.get("explanation")
    if steps is not None and (not isinstance(steps, list) or not steps
                              or not all(isinstance(s, str) and s.strip() for s in steps)):
        raise ConfigError(f"{where}: 'explanation' must be a non-empty list of reasoning steps (strings) "
                          f"(got {_show(steps)})")
    demonstration = None if steps is None else \
        "\n".join(s.strip() for s in steps) + "\n" + PRONTOQA_ANSWER_LINE.format(letter=answer)
    question = f"Context: {context.strip()}\nQuestion: {statement.strip()}\nOptions:\n" + "\n".join(options)
    return Problem(question, demonstration, answer, letters)


# ---------------------------------------------------------------------------- sources
@dataclass
class Source:
    rows: list[tuple[str, dict]]  # (location for errors, row)
    identity: dict  # what the fingerprint records: file name + digest, or hub name/config/split/revision


def read_jsonl(file: Path) -> list[tuple[str, dict]]:
    """Rows of a JSONL file with `file:line` locations. By hand rather than `datasets.load_dataset("json")`,
    which reports a bad row as an Arrow schema error without its line."""
    rows = []
    with file.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{file}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{where}: a row must be a JSON object (got {type(row).__name__})")
            rows.append((where, row))
    if not rows:
        raise ConfigError(f"{file}: no rows")
    return rows


def _local_source(file: Path) -> Source:
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return Source(read_jsonl(file), {"file": file.name, "sha256": digest})


def local_sources(config: BenchmarkConfig) -> tuple[Source | None, Source, bool]:
    """(train, test, same): the local files `config.path` names; `same` when both splits share one file."""
    path = Path(os.path.expanduser(config.path))
    if path.is_file():
        return None, _local_source(path), False
    if not path.is_dir():
        raise ConfigError(f"dataset.path: no such file or directory {config.path!r}")
    files = {"test_file": path / config.test_file}
    if config.train_file:
        files["train_file"] = path / config.train_file
    for key, file in files.items():
        if not file.is_file():
            raise ConfigError(f"dataset.{key}: no file {file.name!r} in dataset.path {config.path!r}")
    test = _local_source(files["test_file"])
    if "train_file" not in files:
        return None, test, False
    if files["train_file"].resolve() == files["test_file"].resolve():
        return test, test, True
    return _local_source(files["train_file"]), test, False


def hub_sources(config: BenchmarkConfig) -> tuple[Source | None, Source, bool]:
    from datasets import load_dataset

    def load(name: str, subset: str | None, split: str) -> Source:
        try:
            rows = load_dataset(name, subset, split=split, revision=config.hub_revision)
        except Exception as error:  # offline, missing, renamed, no such split: all mean the same to the user
            raise ConfigError(f"dataset.hub_name: could not load {name!r} (config {subset!r}, split {split!r}) from "
                              f"the Hugging Face hub ({type(error).__name__}); offline? set dataset.path to a "
                              "local copy") from None
        return Source([(f"{name} [{split}] row {index}", dict(row)) for index, row in enumerate(rows)],
                      {"hub": name, "config": subset, "split": split, "revision": config.hub_revision})

    test_key = (config.hub_name, config.hub_config, config.hub_test_split)
    test = load(*test_key)
    if not config.hub_train_split:
        return None, test, False
    train_key = ((config.hub_train_name, config.hub_train_config) if config.hub_train_name
                 else (config.hub_name, config.hub_config)) + (config.hub_train_split,)
    if train_key == test_key:
        return test, test, True
    return load(*train_key), test, False


# ---------------------------------------------------------------------------- assembly
COLUMNS = ("question", "prompt", "completion", "gold_answer")


def _to_dataset(problems: list[Problem], prefix: str, config: BenchmarkConfig, with_completion: bool) -> Dataset:
    """Rows with `prompt` in the configured format; `completion` only when every row has a demonstration."""
    chat = config.prompt_format == "chat"
    template = config.chat_user_template if chat else config.prompt_template
    columns = {"question": [p.question for p in problems],
               "prompt": [prefix + fill(template, p.question) for p in problems],
               "gold_answer": [p.gold for p in problems]}
    if with_completion:
        delimiter = "" if chat else config.target_delimiter  # chat: the demonstration is the assistant turn
        columns["completion"] = [delimiter + p.demonstration for p in problems]
    order = [c for c in COLUMNS if c in columns]
    return Dataset.from_dict({c: columns[c] for c in order}, features=Features({c: Value("string") for c in order}))


def _convert(source: list[tuple[str, dict]], convert: Callable[[dict, str], Problem], skip: bool,
             empty: list[str]) -> list[Problem]:
    """The rows as problems; the locations of rows with an empty gold answer are appended to `empty`."""
    problems = []
    for where, row in source:
        try:
            problems.append(convert(row, where))
            problems[-1].where = where
        except MissingAnswer as error:
            if not skip:
                raise
            log.warning("skipped (dataset.rows_without_answer=skip): %s", error)
        except EmptyGold:
            empty.append(where)
    return problems


def _limit(items: list, size: int | None) -> list:
    return items if size is None else items[:size]


def load_benchmark(config: BenchmarkConfig, convert: Callable[[dict, str], Problem], has_demonstrations: bool,
                   make_checker: Callable[[list[Problem]], Any]) -> TaskData:
    train_source, test_source, same = local_sources(config) if config.path is not None else hub_sources(config)
    skip = config.rows_without_answer == "skip"
    test_empty, train_empty = [], []  # rows whose gold answer is an empty string: dropped, counted
    if same:
        cut = len(test_source.rows) if config.test_size is None else config.test_size
        test_problems = _convert(test_source.rows[:cut], convert, skip, test_empty)
        train_problems = _convert(test_source.rows[cut:], convert, skip, train_empty)
    else:
        test_problems = _convert(_limit(test_source.rows, config.test_size), convert, skip, test_empty)
        train_problems = _convert(train_source.rows, convert, skip, train_empty) if train_source is not None else []
    for split, empty in (("test", test_empty), ("training", train_empty)):
        if empty:
            log.warning("dataset %s: dropped %d %s rows whose gold answer is empty (%s)%s", config.name, len(empty),
                        split, ", ".join(empty[:3]) + (", ..." if len(empty) > 3 else ""),
                        "; results.json counts them as dropped_empty_gold" if split == "test" else "")

    if not test_problems:
        raise ConfigError(f"dataset: no test rows left in {test_source.identity} after skipping rows without an "
                          "answer (dataset.rows_without_answer=skip) or with an empty one")
    prefix, stop = "", ()
    if config.prompt_format == "few_shot":
        count = config.few_shot_examples
        if len(train_problems) < count:
            raise ConfigError(f"dataset.few_shot_examples: {count} exemplars need as many training rows, and the "
                              f"training split has {len(train_problems)}" +
                              (" (all rows went to the test split: lower dataset.test_size)" if same else ""))
        exemplars, train_problems = train_problems[:count], train_problems[count:]
        missing = [p.where for p in exemplars if p.demonstration is None]
        if missing:
            raise ConfigError(f"{missing[0]}: this few-shot exemplar (dataset.prompt_format=few_shot) has no worked "
                              "solution to show")
        prefix = few_shot_block(config.prompt_template, config.target_delimiter, config.few_shot_separator,
                                [(p.question, p.demonstration) for p in exemplars])
        stop = few_shot_stop(config.prompt_template, config.few_shot_separator)
    validation_problems = None
    if config.validation_size:  # the training split's last rows, out of training (before train_size keeps the first)
        if not train_problems:
            raise ConfigError(f"dataset.validation_size: the validation split is carved from the training split, and "
                              f"dataset={config.name} has none here; set dataset.validation_size=0")
        train_problems, validation_problems = carve_validation(train_problems, config.validation_size,
                                                               f"dataset={config.name}")
    train_problems = _limit(train_problems, config.train_size)

    def with_completion(problems: list[Problem]) -> bool:
        return has_demonstrations and all(p.demonstration is not None for p in problems)

    train = _to_dataset(train_problems, prefix, config, with_completion(train_problems))
    test = _to_dataset(test_problems, prefix, config, with_completion(test_problems))
    validation = None if validation_problems is None else \
        _to_dataset(validation_problems, prefix, config, with_completion(validation_problems))
    fingerprint = {key: value for key, value in vars(config).items()  # neither path nor the timeout changes the rows;
                   if key not in ("path", "check_timeout_seconds")   # validation_size only when set (keys stay put)
                   and (key != "validation_size" or value)}
    fingerprint.update(loader_version=LOADER_VERSION, test_source=test_source.identity,
                       train_source=train_source.identity if train_source is not None else None)
    if stop:  # they change every generated text (keys of data without them stay as they were)
        fingerprint["stop"] = list(stop)
    log.info("dataset %s: %d training rows, %d test rows, prompt format %s", config.name, len(train), len(test),
             config.prompt_format)
    return TaskData(train, test, make_checker(train_problems + test_problems), fingerprint,
                    prompt_format=config.prompt_format, system_prompt=config.system_prompt,
                    dropped_empty_gold=len(test_empty), stop=stop, validation=validation)


# ---------------------------------------------------------------------------- the options
@registry.datasets.register("gsm8k", GSM8KDatasetConfig)
def load_gsm8k(config: GSM8KDatasetConfig) -> TaskData:
    return load_benchmark(config, gsm8k_problem, True, lambda problems: NumericAnswerChecker())


@registry.datasets.register("math", MathDatasetConfig)
def load_math(config: MathDatasetConfig) -> TaskData:
    return load_benchmark(config, math_problem, True, lambda problems: MathAnswerChecker(config.check_timeout_seconds))


@registry.datasets.register("math500", Math500DatasetConfig)
def load_math500(config: Math500DatasetConfig) -> TaskData:
    return load_math(config)


@registry.datasets.register("gaokao2023en", GaokaoDatasetConfig)
def load_gaokao(config: GaokaoDatasetConfig) -> TaskData:
    def make_checker(problems: list[Problem]) -> GaokaoAnswerChecker:
        checker = GaokaoAnswerChecker(config.check_timeout_seconds, config.option_letters)
        # Say up front which gold answers math-verify cannot read: those only match the same text exactly.
        unreadable = [p.gold for p in problems if not checker.is_choice(p.gold)
                      and not answers._math_parse(p.gold, True, checker.math._timeout())]
        if unreadable:
            log.warning("gaokao2023en: math-verify cannot parse %d gold answers (e.g. %s); they count as correct "
                        "only on an exact text match", len(unreadable), unreadable[:3])
        return checker

    return load_benchmark(config, gaokao_problem, False, make_checker)


@registry.datasets.register("prontoqa", ProntoQADatasetConfig)
def load_prontoqa(config: ProntoQADatasetConfig) -> TaskData:
    def make_checker(problems: list[Problem]) -> LetterAnswerChecker:
        letters = sorted({letter for p in problems for letter in p.options})
        words: dict[str, set[str]] = {}
        for problem in problems:
            for letter, text in problem.options.items():
                words.setdefault(text.lower(), set()).add(letter)
        # an option word counts for the flexible reading only if it always names the same letter
        return LetterAnswerChecker("".join(letters), {word: next(iter(found)) for word, found in words.items()
                                                      if len(found) == 1 and word})

    return load_benchmark(config, prontoqa_problem, True, make_checker)
