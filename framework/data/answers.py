"""Final-answer extraction and checking. Every checker reports two readings of an output, as
lm-evaluation-harness does: `strict` reads only the final-answer mark the prompt and demonstrations
teach (the headline accuracy); `flexible` falls back to a looser reading when the mark is missing.

    NumericAnswerChecker  GSM8K / arith: the number after the last `####`; flexible: the last number
    MathAnswerChecker     MATH, MATH-500: the last `\boxed{...}`, compared with math-verify
                          (equivalence, not string match); flexible: math-verify's own extraction
    LetterAnswerChecker   multiple choice (ProntoQA): the marked option letter
    GaokaoAnswerChecker   GAOKAO2023-En: letter match when the gold is an option letter, else math

The GSM8K number handling is a dozen lines of string work, so it is written by hand; mathematical
equivalence is math-verify's job (sympy-backed, with a timeout per parse and per comparison).
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Protocol

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"-?[$]?\d[\d,]*(?:\.\d+)?")
ANSWER_MARK = "####"


def normalize_number(text: str | None) -> str | None:
    """'1,234' -> '1234', '$5.00' -> '5', '7.' -> '7'; None when the text is not a number."""
    if text is None:
        return None
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    normalized = format(value.normalize(), "f")
    return "0" if normalized in ("-0", "0") else normalized


def extract_strict(text: str) -> str | None:
    """The number right after the last `####`, or None if the mark or the number is missing."""
    if ANSWER_MARK not in text:
        return None
    tail = text.rsplit(ANSWER_MARK, 1)[1]
    match = _NUMBER.search(tail)
    return normalize_number(match.group(0)) if match and tail[: match.start()].strip() == "" else None


def extract_flexible(text: str) -> str | None:
    """The strict answer if present, else the last number in the text."""
    strict = extract_strict(text)
    if strict is not None:
        return strict
    matches = _NUMBER.findall(text)
    return normalize_number(matches[-1]) if matches else None


@dataclass(frozen=True)
class Verdict:
    extracted: str | None  # the strict reading of the output (None: no final-answer mark)
    correct: bool
    extracted_flexible: str | None
    correct_flexible: bool


class AnswerChecker(Protocol):
    """What evaluation, the best-of-N decoder and the gold-using methods need from a dataset's checker."""

    name: str

    def gold_from_solution(self, solution: str) -> str | None:
        """The gold final answer written in a worked solution (None: it has none)."""

    def extract(self, output: str) -> str | None:
        """The strict final answer normalised so that equal answers compare equal (majority voting)."""

    def check(self, output: str, gold: str) -> Verdict:
        """Strict and flexible readings of `output`, each judged against `gold`."""

    def answer_start(self, output: str) -> int | None:
        """Where the statement of the final answer begins: the start of the line holding the last strict
        answer mark (None: no mark). Self-Explore cuts a rejected rationale there (self-explore-repo.md)."""


def line_start(text: str, index: int | None) -> int | None:
    """The start of the line that holds `text[index]` (None stays None)."""
    return None if index is None else text.rfind("\n", 0, index) + 1


class NumericAnswerChecker:
    """Checks GSM8K-style outputs against a gold number."""

    name = "numeric"

    def gold_from_solution(self, solution: str) -> str | None:
        return extract_strict(solution)

    def extract(self, output: str) -> str | None:
        """The normalised final answer that `check` compares (strict), e.g. for majority voting."""
        return extract_strict(output)

    def answer_start(self, output: str) -> int | None:
        mark = output.rfind(ANSWER_MARK)
        return line_start(output, mark if mark >= 0 else None)

    def check(self, output: str, gold: str) -> Verdict:
        strict = extract_strict(output)
        flexible = extract_flexible(output)
        gold_normal = normalize_number(gold)
        return Verdict(strict, strict is not None and strict == gold_normal,
                       flexible, flexible is not None and flexible == gold_normal)


# ---------------------------------------------------------------------------- \boxed{...}
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _last_box(text: str) -> tuple[int, str] | None:
    """(start, content) of the last `\\boxed`/`\\fbox` in `text`, or None (no box, or it never closes)."""
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    start, position = matches[-1].start(), matches[-1].end()
    while position < len(text) and text[position] in " \t":
        position += 1
    if position < len(text) and text[position] == "{":
        depth, index = 0, position
        while index < len(text):
            char = text[index]
            if char == "\\":  # an escaped character (`\{`, `\}` are literal set braces) never opens or closes
                index += 2
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    content = text[position + 1:index].strip()
                    return (start, content) if content else None
            index += 1
        return None  # unbalanced: the output was cut off inside the box
    token = re.match(r"[^\s$]+", text[position:])  # `\boxed 5`: TeX takes the next token
    return (start, token.group(0)) if token else None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), found by matching braces.

    A regex cannot match nested braces (`\\boxed{\\frac{1}{\\sqrt{2}}}`), hence this small scanner.
    Escaped braces (`\\{1,2\\}`) do not count; `\\boxed 5` (no braces) gives the token after it.
    None when there is no box, it is empty, or its braces never close (a truncated output).
    """
    found = _last_box(text)
    return None if found is None else found[1]


# ---------------------------------------------------------------------------- math-verify
_warned_off_main_thread = False


def _squash(text: str) -> str:
    """Whitespace- and `$`-free text: the last-resort comparison when math-verify parses nothing."""
    return re.sub(r"\s+|\$", "", text)


def _has_math_delimiters(text: str) -> bool:
    return re.search(r"(?<!\\)\$|\\\(|\\\[", text) is not None


@lru_cache(maxsize=16384)  # sampled and best-of-N outputs repeat; parsing is the slow part (sympy)
def _math_parse(text: str, is_answer: bool, timeout_seconds: int | None) -> tuple:
    """math-verify's parse. `is_answer`: `text` is an answer on its own (a box's content, a gold answer),
    read whole; else free text, from which math-verify extracts the final answer its own way."""
    from math_verify import parse

    if is_answer and not _has_math_delimiters(text):
        text = "\\boxed{" + text + "}"
    return tuple(parse(text, parsing_timeout=timeout_seconds))


@lru_cache(maxsize=16384)
def _math_equal(gold: str, prediction: str, prediction_is_answer: bool, timeout_seconds: int | None) -> bool:
    from math_verify import verify

    gold_parsed = _math_parse(gold, True, timeout_seconds)
    predicted = _math_parse(prediction, prediction_is_answer, timeout_seconds)
    if not gold_parsed:  # a gold math-verify cannot read at all: exact match of the squashed text
        return prediction_is_answer and _squash(gold) == _squash(prediction)
    if not predicted:
        return False
    return verify(list(gold_parsed), list(predicted), timeout_seconds=timeout_seconds)


def _trim_zeros(text: str) -> str:
    """'0.750000000000' -> '0.75', '20.0000000000' -> '20' (sympy prints every requested digit)."""
    return re.sub(r"\.(?!\d)", "", re.sub(r"(\.\d*?)0+(?!\d)", r"\1", text))


def _canonical_text(expression) -> str:
    from sympy import Expr, N

    if isinstance(expression, Expr) and expression.is_number:
        return _trim_zeros(str(N(expression, 12)))
    return str(expression)


@lru_cache(maxsize=16384)
def _math_canonical(answer: str, timeout_seconds: int | None) -> str:
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout
    from sympy import Basic
    from sympy.matrices import MatrixBase

    parsed = _math_parse(answer, True, timeout_seconds)
    expression = next((item for item in parsed if isinstance(item, (Basic, MatrixBase))), None)
    if expression is None:
        return _squash(answer)
    try:  # evaluating a parsed answer (10^{10^{10}}) can take long: the same limit as a comparison
        return timeout(timeout_seconds)(_canonical_text)(expression)
    except (Exception, TimeoutException):
        return _squash(answer)


def _first_string(parsed: tuple) -> str | None:
    """The answer as math-verify found it in the text (parse returns [sympy object, matched string])."""
    strings = [item for item in parsed if isinstance(item, str)]
    return strings[0] if strings else (str(parsed[0]) if parsed else None)


class MathAnswerChecker:
    """MATH-style answers: strict = the last `\\boxed{...}` of the output; flexible = that box, else
    the answer math-verify's own extraction finds in the whole text (a `final answer is ...` phrase,
    then the last LaTeX or plain expression). Both are compared with the gold by math-verify's `verify`
    (1/2 = 0.5 = \\frac12, {1,2} = {2,1}, intervals, equations like x=5 against 5), each parse and
    comparison under `timeout_seconds` (signal-based: enforced on the main thread only; elsewhere
    checks run without a limit and a warning says so)."""

    name = "math"

    def __init__(self, timeout_seconds: int = 5):
        if timeout_seconds < 1:
            raise ValueError(f"timeout_seconds must be >= 1 (got {timeout_seconds})")
        self.timeout_seconds = int(timeout_seconds)

    def _timeout(self) -> int | None:
        global _warned_off_main_thread
        if threading.current_thread() is threading.main_thread():
            return self.timeout_seconds
        if not _warned_off_main_thread:  # math-verify's timeout uses SIGALRM, which only the main thread gets
            log.warning("math answer checks run outside the main thread: math-verify's %d s timeout cannot be "
                        "enforced there (it uses signals); checking without a time limit",
                        self.timeout_seconds)
            _warned_off_main_thread = True
        return None

    def gold_from_solution(self, solution: str) -> str | None:
        return last_boxed(solution)

    def canonical(self, answer: str) -> str:
        """The key majority voting groups answers by: a number as its value to 12 significant digits
        (\\frac34, 0.75 and \\dfrac{3}{4} give '0.75'; 2\\sqrt2 and \\sqrt8 give '2.82842712475'), anything
        else as sympy prints it ({2,1} gives '{1, 2}'), the squashed text when math-verify parses nothing.
        Equivalent answers of other shapes (x=5 against 5) may still get different keys."""
        return _math_canonical(answer, self._timeout())

    def extract(self, output: str) -> str | None:
        boxed = last_boxed(output)
        return None if boxed is None else self.canonical(boxed)

    def answer_start(self, output: str) -> int | None:
        box = list(_BOX.finditer(output))
        return line_start(output, box[-1].start() if box else None)

    def equal(self, gold: str, answer: str) -> bool:
        """Whether `answer` (a bare answer, e.g. a box's content) is equivalent to `gold`."""
        return _math_equal(gold.strip(), answer, True, self._timeout())

    def check(self, output: str, gold: str) -> Verdict:
        strict = last_boxed(output)
        if strict is not None:
            correct = self.equal(gold, strict)
            return Verdict(strict, correct, strict, correct)
        timeout = self._timeout()
        flexible = _first_string(_math_parse(output, False, timeout))
        correct_flexible = flexible is not None and _math_equal(gold.strip(), output, False, timeout)
        return Verdict(None, False, flexible, correct_flexible)


# ---------------------------------------------------------------------------- option letters
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{([^{}]*)\}")
# "The answer is B", "the answer is (B).", "Answer: B", "The answer is A, C" (a multiple-answer question)
_ANSWER_IS = re.compile(r"(?i:answer\s+is|answer\s*:)\s*:?\s*\(?([A-Z](?:\s*(?:,|and)?\s*\(?[A-Z]\)?)*)\)?"
                        r"(?![A-Za-z])")
# looser marks of an option: "(B)", "B)", at any place
_OPTION_MARK = re.compile(r"\(([A-Z])\)|(?<![A-Za-z(])([A-Z])\)")


def option_letters(text: str, allowed: str) -> str | None:
    """The option letter(s) a short answer names, sorted ('B', '(B)', 'B) False', '\\text{B}', 'A, C' ->
    'AC'); None when it names none of `allowed` or anything else."""
    text = _LATEX_TEXT.sub(r"\1", text).replace("$", "").strip()
    compact = re.sub(r"[\s,;()]|\band\b", "", text)  # 'A, C', 'A and C', '(A)(C)', 'ACD'
    if re.fullmatch(r"[A-Z]+", compact):
        distinct = len(set(compact)) == len(compact) and set(compact) <= set(allowed)
        return "".join(sorted(compact)) if distinct else None
    single = re.fullmatch(r"\(?([A-Z])(?:[).:](?:\s.*)?|\s.*)?", text, flags=re.S)  # 'B) False', 'B. 3'
    return single.group(1) if single and single.group(1) in allowed else None


class LetterAnswerChecker:
    """Multiple choice: the gold is an option letter (or several, e.g. 'ACD').

    strict: the last marked final answer, `The answer is X` / `Answer: X` or `\\boxed{X}`, whichever
    comes last. flexible: strict, else the last option mark `(X)` / `X)` or option word (e.g. True ->
    A, False -> B for ProntoQA, from `option_words`) anywhere in the text.
    """

    name = "letter"

    def __init__(self, letters: str = "ABCDE", option_words: dict[str, str] | None = None):
        self.letters = letters
        self.option_words = {word.lower(): letter for word, letter in (option_words or {}).items()}
        words = sorted(self.option_words, key=len, reverse=True)
        self._word = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.I) if words else None

    def gold_from_solution(self, solution: str) -> str | None:
        return self.extract(solution)

    def extract(self, output: str) -> str | None:
        marks = []
        said = list(_ANSWER_IS.finditer(output))
        if said:
            marks.append((said[-1].start(), said[-1].group(1)))
        boxed = _last_box(output)
        if boxed is not None:
            marks.append(boxed)
        if not marks:
            return None
        return option_letters(max(marks)[1], self.letters)

    def answer_start(self, output: str) -> int | None:
        marks = [m.start() for m in _ANSWER_IS.finditer(output)] + [m.start() for m in _BOX.finditer(output)]
        return line_start(output, max(marks) if marks else None)

    def _loose(self, output: str) -> str | None:
        found = [(m.start(), m.group(1) or m.group(2)) for m in _OPTION_MARK.finditer(output)
                 if (m.group(1) or m.group(2)) in self.letters]
        if self._word is not None:
            found += [(m.start(), self.option_words[m.group(1).lower()]) for m in self._word.finditer(output)]
        return max(found)[1] if found else None

    def check(self, output: str, gold: str) -> Verdict:
        gold_letters = option_letters(gold, self.letters) or gold.strip()
        strict = self.extract(output)
        flexible = strict if strict is not None else self._loose(output)
        return Verdict(strict, strict == gold_letters, flexible, flexible == gold_letters)


class GaokaoAnswerChecker:
    """GAOKAO2023-En mixes free-form answers (often LaTeX: sets, fractions, intervals) and multiple
    choice with the options inline in the question. A gold that is only option letters ('C', '$C$',
    '(C)', 'ACD') is checked as multiple choice (LetterAnswerChecker), any other gold with math-verify
    (MathAnswerChecker). The strict mark is `\\boxed{...}` for both ('the answer is X' too for letters)."""

    name = "gaokao"

    def __init__(self, timeout_seconds: int = 5, letters: str = "ABCDE"):
        self.math = MathAnswerChecker(timeout_seconds)
        self.choice = LetterAnswerChecker(letters)

    def is_choice(self, gold: str) -> bool:
        text = _LATEX_TEXT.sub(r"\1", gold).replace("$", "")
        compact = re.sub(r"[\s,;()]|\band\b", "", text)
        return bool(re.fullmatch(r"[A-Z]+", compact)) and option_letters(gold, self.choice.letters) is not None

    def gold_from_solution(self, solution: str) -> str | None:
        return last_boxed(solution)

    def extract(self, output: str) -> str | None:
        boxed = last_boxed(output)
        if boxed is None:
            return self.choice.extract(output)
        return option_letters(boxed, self.choice.letters) or self.math.canonical(boxed)

    def answer_start(self, output: str) -> int | None:
        return self.choice.answer_start(output)  # the last box or `the answer is`, whichever comes last

    def check(self, output: str, gold: str) -> Verdict:
        return (self.choice if self.is_choice(gold) else self.math).check(output, gold)
