"""Dataset plugins: each turns its config node into a `TaskData` (task.py: the train/test splits and their
columns, the answer checker, the fingerprint of the rows). This module holds the embedded arith task and
the reader of local GSM8K-format files; benchmarks.py the real benchmarks.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

from framework import registry
from framework.config import DatasetConfig, require
from framework.data import arith
from framework.data.answers import NumericAnswerChecker
from framework.data.task import TaskData, carve_validation
from framework.errors import ConfigError

SPLITS = ("train", "test")


def _rows_to_dataset(rows: list[dict], template: str, checker, where: str) -> Dataset:
    records = []
    for index, row in enumerate(rows):
        gold = checker.gold_from_solution(row["answer"])
        if gold is None:
            raise ConfigError(f"{where(index)}: the answer has no final '#### <number>' line: {row['answer'][-80:]!r}")
        records.append({"question": row["question"], "prompt": template.format(question=row["question"]),
                        "completion": row["answer"], "gold_answer": gold})
    return Dataset.from_list(records)


def _limit(rows: list[dict], size: int | None) -> list[dict]:
    return rows if size is None else rows[:size]


def read_gsm8k_jsonl(file: Path) -> list[dict]:
    """Read GSM8K-format rows ({"question", "answer"}) with errors that name the file and line.

    Parsed by hand rather than with `datasets.load_dataset("json")` because that reports a bad row as an
    Arrow schema error without its line number.
    """
    if not file.is_file():
        raise ConfigError(f"dataset.path: no file {str(file)!r}")
    rows = []
    with file.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{file}:{line_number}: not valid JSON ({error.msg})") from None
            for key in ("question", "answer"):
                if not isinstance(row, dict) or not isinstance(row.get(key), str) or not row[key].strip():
                    raise ConfigError(f"{file}:{line_number}: row has no non-empty string field {key!r}")
            row["_line"] = line_number
            rows.append(row)
    if not rows:
        raise ConfigError(f"{file}: no rows")
    return rows


def _file_digest(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()[:16]


def load_local_gsm8k_format(config: DatasetConfig, checker) -> TaskData:
    directory = Path(os.path.expanduser(config.path))
    if not directory.is_dir():
        raise ConfigError(f"dataset.path: {config.path!r} is not a directory holding train.jsonl and test.jsonl")
    datasets, fingerprint = {}, {"path": str(directory.resolve())}
    for split in SPLITS:
        file = directory / f"{split}.jsonl"
        rows = read_gsm8k_jsonl(file)
        if split == "train" and config.validation_size:
            rows, datasets["validation"] = carve_validation(rows, config.validation_size, str(file))
        rows = _limit(rows, getattr(config, f"{split}_size"))
        datasets[split] = _rows_to_dataset(rows, config.prompt_template, checker,
                                           lambda i, rows=rows, file=file: f"{file}:{rows[i]['_line']}")
        fingerprint[split] = _file_digest(file)
    validation = None
    if "validation" in datasets:
        file = directory / "train.jsonl"
        validation = _rows_to_dataset(datasets["validation"], config.prompt_template, checker,
                                      lambda i, rows=datasets["validation"]: f"{file}:{rows[i]['_line']}")
        fingerprint["validation_size"] = config.validation_size  # absent when 0: keys of runs without one stay put
    return TaskData(datasets["train"], datasets["test"], checker, fingerprint, validation=validation)



# ---------------------------------------------------------------------------- arith (embedded default)
@dataclass
class ArithDatasetConfig(DatasetConfig):
    name: str = "arith"
    max_new_tokens: int = 96  # the embedded task's solutions are under ~45 tokens
    seed: int = 0  # the data seed; independent of the run seed so seeds vary training, not the task
    train_size: int | None = 2000
    test_size: int | None = 200
    min_steps: int = 2  # operations per problem, drawn uniformly from [min_steps, max_steps]
    max_steps: int = 4
    start_max: int = 20  # the starting amount is drawn from [1, start_max]
    operand_max: int = 10  # each added/subtracted amount is drawn from [1, operand_max]
    value_max: int = 50  # running values stay in [0, value_max]
    multiplier_max: int = 3  # for the `mul` operation
    operations: list[str] = field(default_factory=lambda: ["add", "sub"])  # any of add, sub, mul
    distractors_max: int = 1  # sentences about another person per problem, drawn from [0, distractors_max]
    # version 3: several correct solutions a problem (RFT's premise), the demonstration one of them at random
    solution_order: str = "any"  # the demonstration's order of the changes: story (the question's) | any (a random valid one)
    commute_additions: float = 0.5  # probability that the demonstration writes an addition amount first
    heldout_size: int = 256  # problems in neither split: the pool label-free methods may sharpen on (prompts only)

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.train_size is not None and self.test_size is not None, f"{prefix}.train_size",
                "and test_size must be numbers for the generated task", (self.train_size, self.test_size))
        require(1 <= self.min_steps <= self.max_steps, f"{prefix}.min_steps",
                "must satisfy 1 <= min_steps <= max_steps", (self.min_steps, self.max_steps))
        for key in ("start_max", "operand_max"):
            require(getattr(self, key) >= 1, f"{prefix}.{key}", "must be >= 1", getattr(self, key))
        require(self.start_max <= self.value_max <= arith.NUMBER_TOKEN_MAX, f"{prefix}.value_max",
                f"must be in [start_max, {arith.NUMBER_TOKEN_MAX}]", self.value_max)
        require(self.multiplier_max >= 2, f"{prefix}.multiplier_max", "must be >= 2", self.multiplier_max)
        require(self.distractors_max >= 0, f"{prefix}.distractors_max", "must be >= 0", self.distractors_max)
        require(self.solution_order in arith.SOLUTION_ORDERS, f"{prefix}.solution_order",
                f"must be one of {list(arith.SOLUTION_ORDERS)}", self.solution_order)
        require(0 <= self.commute_additions <= 1, f"{prefix}.commute_additions", "must be in [0, 1]",
                self.commute_additions)
        require(self.heldout_size >= 0, f"{prefix}.heldout_size", "must be >= 0", self.heldout_size)
        unknown = sorted(set(self.operations) - set(arith.CHANGES))
        require(bool(self.operations) and not unknown, f"{prefix}.operations",
                f"must be a non-empty list drawn from {sorted(arith.CHANGES)}", list(self.operations))

    def spec(self) -> arith.ArithSpec:
        return arith.ArithSpec(self.min_steps, self.max_steps, self.start_max, self.operand_max, self.value_max,
                               self.multiplier_max, tuple(self.operations), self.distractors_max,
                               self.solution_order, self.commute_additions)


@registry.datasets.register("arith", ArithDatasetConfig)
def load_arith(config: ArithDatasetConfig) -> TaskData:
    checker = NumericAnswerChecker()
    if config.path:
        return load_local_gsm8k_format(config, checker)
    sizes = {"train": config.train_size, "test": config.test_size, "heldout": config.heldout_size,
             "validation": config.validation_size}
    try:  # the held-out pool and the validation split come last: the splits before them are the same without them
        splits = arith.generate_splits(config.spec(), sizes, config.seed)
    except ValueError as error:
        raise ConfigError(f"dataset: {error}") from None
    # validation_size only when set: the keys of runs without a validation split stay as they were before it existed
    fingerprint = {key: value for key, value in vars(config).items() if key != "validation_size" or value}
    fingerprint["generator_version"] = arith.GENERATOR_VERSION
    data = {split: _rows_to_dataset(rows, config.prompt_template, checker, lambda i, s=split: f"arith {s} row {i}")
            for split, rows in splits.items()}
    structures = {config.prompt_template.format(question=row["question"]): (row["start"], row["changes"])
                  for rows in splits.values() for row in rows}
    heldout = data["heldout"] if config.heldout_size else None  # labelled here; without_labels() strips it
    validation = data["validation"] if config.validation_size else None
    return TaskData(data["train"], data["test"], checker, fingerprint, heldout=heldout, validation=validation,
                    first_wrong_step=lambda prompt, steps: arith.first_wrong_step(*structures[prompt], steps))

