"""The task data every dataset plugin returns: train/test `datasets.Dataset`s with the columns

    question     the problem text
    prompt       what the model sees: the question in the dataset's prompt format (for chat, the user
                 message until `TaskData.render_prompts` applies the model's chat template)
    completion   the demonstration (a worked solution ending in its final answer); absent when the rows
                 have none (GAOKAO)
    gold_answer  the final answer, used by evaluation (and by methods allowed labels)

plus the answer checker evaluation uses and a fingerprint of everything that determines the rows, and
optionally a labelled validation split (`validation`, disjoint from both: for evaluation during training and
searches), a held-out pool of unlabelled prompts (`heldout`: disjoint from both splits, for the label-free
methods to sharpen on without touching SFT's data or the test prompts) and a task's exact check of a solution's
steps (`first_wrong_step`, for the Self-Explore premise). A module of its own, below the loaders (loaders.py,
benchmarks.py) that build it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Callable

from datasets import Dataset

from framework.data.answers import AnswerChecker
from framework.errors import ConfigError


@dataclass
class TaskData:
    train: Dataset  # may be empty (evaluation-only datasets), with the same columns
    test: Dataset
    checker: AnswerChecker
    fingerprint: dict = field(default_factory=dict)  # determines the rows; part of every stage key
    # zero_shot | few_shot: `prompt` is the final text. chat: `prompt` holds the user message until
    # `render_prompts(tokenizer)` wraps it in the model's chat template (the loader has no tokenizer).
    prompt_format: str = "zero_shot"
    system_prompt: str | None = None  # chat only: an optional system turn before the user message
    chat_rendered: bool = False  # render_prompts has run (it is idempotent)
    dropped_empty_gold: int = 0  # test rows left out because their gold answer is empty (benchmarks.py)
    # labelled problems held out for validation (dataset.validation_size): disjoint from train and test; None: none
    validation: Dataset | None = None
    heldout: Dataset | None = None  # problems in neither split (a label-free method sees their prompts only); None: none
    # (prompt, the solution's steps) -> the 1-based first step no correct solution has, or None when all are right;
    # None: the task has no exact check (the premises then compare with the demonstration, an approximation)
    first_wrong_step: Callable[[str, list[str]], int | None] | None = None
    # strings that end every generated sequence (excluded from its text): few-shot prompts' start of the next
    # exemplar (prompts.few_shot_stop); empty for zero-shot and chat prompts
    stop: tuple[str, ...] = ()

    UNLABELLED_COLUMNS = ("question", "prompt")

    @property
    def has_demonstrations(self) -> bool:
        """Whether the training split carries worked solutions (`completion`) to train on."""
        return "completion" in self.train.column_names

    def without_labels(self) -> "TaskData":
        """The same problems with gold answers and demonstrations removed, for label-free methods."""
        keep = lambda split: split.select_columns([c for c in self.UNLABELLED_COLUMNS if c in split.column_names])
        return replace(self, train=keep(self.train), test=keep(self.test), first_wrong_step=None,
                       heldout=None if self.heldout is None else keep(self.heldout),
                       validation=None if self.validation is None else keep(self.validation))

    def render_prompts(self, tokenizer) -> "TaskData":
        """For prompt_format=chat: every `prompt` becomes the model's chat-template text of
        [system turn,] user turn + the generation prompt. A no-op for the other formats and when done."""
        if self.prompt_format != "chat" or self.chat_rendered:
            return self
        from framework.data.prompts import chat_renderer

        render = chat_renderer(tokenizer, self.system_prompt)  # ConfigError without a chat template
        swap = lambda split: split.remove_columns("prompt").add_column("prompt", [render(p) for p in split["prompt"]])
        fingerprint = {**self.fingerprint, "chat_template": hashlib.sha256(
            tokenizer.chat_template.encode("utf-8")).hexdigest()[:16]}
        return replace(self, train=swap(self.train), test=swap(self.test), fingerprint=fingerprint,
                       heldout=None if self.heldout is None else swap(self.heldout),
                       validation=None if self.validation is None else swap(self.validation), chat_rendered=True)


def carve_validation(rows: list, size: int, source: str) -> tuple[list, list]:
    """(training rows, validation rows): the last `size` rows of a training split become the validation split and
    leave training; ConfigError when the split is not larger than that."""
    if len(rows) <= size:
        raise ConfigError(f"dataset.validation_size: {size} validation rows are carved from the training split, "
                          f"which has {len(rows)} ({source}); ask for fewer")
    return rows[:-size], rows[-size:]
