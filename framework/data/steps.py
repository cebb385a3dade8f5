"""Step splitters: a solution text cut into its reasoning steps, losslessly.

A splitter returns spans that concatenate back to the text (whitespace included), so a prefix of
steps is exactly what the model wrote. Self-Explore (algorithms/self_explore.py) explores the prefixes
of incorrect rationales, and the premises check (premises.py) places its first pits on the same steps.

    lines       GSM8K-style: one step per non-empty line
    sentences   MATH-style: a sentence or a displayed formula, LaTeX-aware
"""
from __future__ import annotations

import re
from typing import Callable

from framework.errors import ConfigError


def _join_blank_pieces(pieces: list[str]) -> list[str]:
    """Steps from consecutive pieces of a text: a whitespace-only piece joins the step before it (or,
    at the start, the first step), so the steps stay non-blank and concatenate back to the text."""
    steps: list[str] = []
    leading = ""
    for piece in pieces:
        if piece.strip():
            steps.append(leading + piece)
            leading = ""
        elif steps:
            steps[-1] += piece
        else:
            leading += piece
    return steps


def split_lines(text: str) -> list[str]:
    """GSM8K-style: one step per non-empty line, each keeping its line ending."""
    return _join_blank_pieces(text.splitlines(keepends=True))


_DISPLAY_OPENERS = (("\\[", "\\]"), ("$$", "$$"))
_INLINE_OPENERS = (("\\(", "\\)"), ("$", "$"))
_BEGIN = re.compile(r"\\begin\{([^}]*)\}")


def split_sentences(text: str) -> list[str]:
    """MATH-style: a step is a sentence or a displayed formula.

    Cuts fall after a sentence end (. ! ? followed by whitespace) outside math, after a display
    formula ($$..$$, \\[..\\], \\begin{..}..\\end{..}) that ends its line or is followed by a capital
    letter, after a formula whose content ends a sentence ("$3.$ Then"), and at blank lines. Inline
    math ($..$, \\(..\\)) never splits; `\\$` is a dollar sign. The whitespace after a cut belongs to
    the step before it, so the steps concatenate back to `text`."""
    cuts, index, length = [0], 0, len(text)
    closing: str | None = None  # the delimiter that ends the math span we are in
    display = False

    def whitespace_end(position: int) -> int:
        while position < length and text[position].isspace():
            position += 1
        return position

    opened_at = 0  # where the current math span's content starts
    while index < length:
        if closing is not None:  # inside math: only look for its end
            if text.startswith(closing, index):
                content = text[opened_at:index].rstrip()
                index += len(closing)
                end = whitespace_end(index)
                new_sentence = end < length and text[end].isupper()
                ended_inside = content.endswith((".", "!", "?")) and end > index  # "... $3.$ Therefore"
                if (display and ("\n" in text[index:end] or end == length or new_sentence)) or (
                        ended_inside and new_sentence):
                    cuts.append(end)
                    index = end
                closing, display = None, False
            else:
                index += 2 if text[index] == "\\" else 1
            continue
        begin = _BEGIN.match(text, index)
        if begin:
            closing, display = f"\\end{{{begin.group(1)}}}", True
            index = opened_at = begin.end()
            continue
        opener = next(((o, c, True) for o, c in _DISPLAY_OPENERS if text.startswith(o, index)), None) or next(
            ((o, c, False) for o, c in _INLINE_OPENERS if text.startswith(o, index)), None)
        if opener:
            closing, display = opener[1], opener[2]
            index = opened_at = index + len(opener[0])
            continue
        if text[index] == "\\":  # an escaped character such as \$ or a command
            index += 2
            continue
        if text[index] in ".!?" and index + 1 < length and text[index + 1].isspace():
            end = whitespace_end(index + 1)
            cuts.append(end)
            index = end
            continue
        if text[index] == "\n":
            end = whitespace_end(index)
            if text.count("\n", index, end) >= 2:  # a blank line: paragraph break
                cuts.append(end)
            index = end
            continue
        index += 1
    cuts.append(length)
    return _join_blank_pieces([text[start:end] for start, end in zip(cuts, cuts[1:]) if end > start])


SPLITTERS: dict[str, Callable[[str], list[str]]] = {"lines": split_lines, "sentences": split_sentences}


def split_steps(splitter: str, text: str) -> list[str]:
    """The configured splitter, held to its contract: non-blank steps that concatenate to `text`, and
    at least one step for any non-blank text."""
    if not text.strip():
        return []  # an empty rationale has no step to blame; callers count it
    steps = SPLITTERS[splitter](text)
    if not steps:
        raise ConfigError(f"algorithm.step_splitter={splitter} yields zero steps for a non-empty rationale "
                          f"{text[:80]!r}; choose a splitter that fits the data (lines: GSM8K-style, "
                          "sentences: MATH-style)")
    if "".join(steps) != text or any(not step.strip() for step in steps):
        raise ConfigError(f"algorithm.step_splitter={splitter} must return non-blank steps that concatenate "
                          f"back to the rationale (got {steps[:3]!r} for {text[:80]!r})")
    return steps
