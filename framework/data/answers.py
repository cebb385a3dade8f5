"""Final-answer extraction and checking. Every checker reports two readings of an output, as
lm-evaluation-harness does: `strict` reads only the final-answer mark the prompt and demonstrations
teach (the headline accuracy); `flexible` also accepts a looser reading: when the mark is missing, and
for math answers boxes side by side and a percent gold's fraction.

    NumericAnswerChecker  GSM8K / arith: the number after the last `####`; flexible: the last number
    MathAnswerChecker     MATH, MATH-500: the last `\boxed{...}`, compared with math-verify
                          (equivalence, not string match), else as answer sets with the gold's units
                          stripped; flexible: also `\boxed{2} or \boxed{-2}` as one answer, 5.3% = 0.053,
                          and without a box math-verify's own extraction
    LetterAnswerChecker   multiple choice (ProntoQA): the marked option letter
    GaokaoAnswerChecker   GAOKAO2023-En: letter match when the gold is an option letter, else math

The GSM8K number handling is a dozen lines of string work, so it is written by hand; mathematical
equivalence is math-verify's job (sympy-backed, with a timeout per parse and per comparison); splitting an
answer set into members and stripping units is string work around it (see "answer sets and units").
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


def _read_box(text: str, match: re.Match) -> tuple[str, int] | None:
    """(content, end) of the box whose `\\boxed` `match` found, or None (empty, or its braces never close)."""
    position = match.end()
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
                    return (content, index + 1) if content else None
            index += 1
        return None  # unbalanced: the output was cut off inside the box
    token = re.match(r"[^\s$]+", text[position:])  # `\boxed 5`: TeX takes the next token
    return (token.group(0), position + token.end()) if token else None


def _last_box(text: str) -> tuple[int, str] | None:
    """(start, content) of the last `\\boxed`/`\\fbox` in `text`, or None (no box, or it never closes)."""
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    found = _read_box(text, matches[-1])
    return None if found is None else (matches[-1].start(), found[0])


# what may stand between the boxes of one answer written as several: `\boxed{2} \text{ or } \boxed{-2}`,
# `$\boxed{5}$, $\boxed{9}$`
_BETWEEN_BOXES = re.compile(r"(?:\s|\$|[,;]|\\[()\[\],;:! ]|\\q?quad\b|\b(?:or|and)\b"
                            r"|\\(?:text|mbox)\s*\{\s*(?:,|or|and)?\s*\})*")


def boxed_run(text: str) -> list[str] | None:
    """The contents of the last boxes of `text` when two or more stand together, joined only by separators
    (`\\boxed{2} or \\boxed{-2}` -> ['2', '-2']); None when the last box stands alone (or there is none)."""
    run, later_start = [], None
    for match in reversed(list(_BOX.finditer(text))):
        found = _read_box(text, match)
        if found is None or (later_start is not None and (found[1] > later_start  # a box inside the next one
                                                          or not _BETWEEN_BOXES.fullmatch(text[found[1]:later_start]))):
            break
        run.insert(0, found[0])
        later_start = match.start()
    return run if len(run) >= 2 else None


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


# ---------------------------------------------------------------------------- answer sets and units
# Golds such as "$2$ or $-2$", "$48$, $384$", "20 $cm^{2}$", "$22.1cm^{2}$", "5.3\%" (GAOKAO2023-En, MATH).
# math-verify reads many answer sets and `\text{...}` units itself, but not a gold that mixes words and
# `$...$` ("20 $cm^{2}$"), units written as bare letters with a power ("22.1cm^{2}", "576\pi\;m^{2}") or a
# list whose commas look like a thousands separator. So an answer is also split into members here, the
# reference's units stripped from each, and the members matched one to one, each pair still compared by
# math-verify. The splitting and stripping are string work no library offers on its own (Qwen2.5-Math's
# evaluation parser does the like inside its own grader), hence written by hand.

_DOLLAR = re.compile(r"(?<!\\)\$")  # a math delimiter; `\$` is a dollar sign
_TEXT_SEPARATOR = re.compile(r"\\(?:text|mbox|textrm|textnormal)\s*\{\s*(or|and|,)\s*\}")
_WORD_SEPARATOR = re.compile(r"(?<![A-Za-z\\])(?:or|and)(?![A-Za-z])")
# 35,000 and MATH's 10,\!080: one number, not two members ("48, 384", with a space, is two)
_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:,(?:\\!\s*)?\d{3})+(?!\d)")
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad(?![A-Za-z])|~")
_POWER = r"(?:\^\s*\{?\s*([23])\s*\}?)?"
_TEXT_UNIT = re.compile(r"\\(?:text|mbox|textrm|textnormal)\s*\{\s*([A-Za-z][A-Za-z. ]*?)\s*\}\s*" + _POWER + r"\s*$")
# units a gold writes as bare letters: only stripped when what is left is a number (no letters but commands),
# one-letter ones only after a space (split_unit)
_UNIT_WORDS = ("mm", "cm", "dm", "km", "m", "mg", "kg", "g", "ml", "L", "s", "sec", "min", "h", "hr", "hours",
               "am", "pm", "yuan", "dollars", "cents", "inches", "inch", "feet", "ft", "meters", "metres", "miles",
               "units", "degrees")
_BARE_UNIT = re.compile(r"(?<![A-Za-z\\])(" + "|".join(sorted(_UNIT_WORDS, key=len, reverse=True)) + r")\s*"
                        + _POWER + r"\s*$")
_DEGREES = re.compile(r"(?:\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z]))\s*$")
_PERCENT = re.compile(r"\\?%\s*$")
_CURRENCY = re.compile(r"^\s*\\\$\s*")
_TRAILING_SPACE = re.compile(r"(?:\s|\\[,;:! ]|~)+$")


def answer_members(answer: str) -> list[str]:
    """The members of an answer set: `answer` without its `$` delimiters, split at `,`, `;`, `or` and `and`
    (also `\\text{ or }`) outside brackets and braces. '$2$ or $-2$' -> ['2', '-2']; '(1,3)', '\\{1,2\\}',
    '35,000' and '10,\\!080' are one member each."""
    text = _TEXT_SEPARATOR.sub(r" \1 ", _DOLLAR.sub(" ", answer))
    numbers = {match.start(): match.end() for match in _THOUSANDS.finditer(text)}
    words = {match.start(): match.end() for match in _WORD_SEPARATOR.finditer(text)}
    members, depth, start, index = [], 0, 0, 0
    while index < len(text):
        if index in numbers:  # its commas are digit groups
            index = numbers[index]
            continue
        char = text[index]
        if char == "\\" and text[index + 1:index + 2] in (",", ";", ":", "!", " ", "\\"):  # spacing, not a separator
            index += 2
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and (char in ",;" or index in words):
            members.append(text[start:index])
            start = index = index + 1 if char in ",;" else words[index]
            continue
        index += 1
    members = [member.strip() for member in [*members, text[start:]] if member.strip()]
    return members if depth == 0 and members else [text.strip()]


def _unit_key(name: str, power: str | None = None) -> str:
    name = re.sub(r"[\s.{}]", "", name)
    name = {"degree": "°", "degrees": "°", "percent": "%"}.get(name.lower(), name)
    return name + (f"^{power}" if power else "")


def split_unit(member: str) -> tuple[str, str | None]:
    """(value, unit) of one answer member: '20 cm^{2}' -> ('20', 'cm^2'), '5.4 \\text{ cents}' -> ('5.4', 'cents'),
    '90^\\circ' -> ('90', '°'), '5.3\\%' -> ('5.3', '%'), '\\$32' -> ('32', '$'); (member, None) without one.
    A unit is never all of the member ('\\text{east}' stays), and bare letters ('cm', 'm') count as a unit only
    after a number, a one-letter one only after a space ('20 m^2', '22.1cm^2'; not '3s^2', 'x cm')."""
    text = member.strip()
    currency = _CURRENCY.match(text)
    if currency and text[currency.end():]:
        return text[currency.end():], "$"
    for pattern in (_TEXT_UNIT, _BARE_UNIT, _DEGREES, _PERCENT):
        found = pattern.search(text)
        if found is None:
            continue
        before = text[:found.start()]
        value = _TRAILING_SPACE.sub("", before)
        if not value or (pattern is _BARE_UNIT and (
                re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", value))  # '3x cm': x is no number
                or (len(found.group(1)) == 1 and value == before))):  # '3s^2' is algebra, '20 m^2' a unit
            continue
        if pattern is _DEGREES:
            return value, "°"
        if pattern is _PERCENT:
            return value, "%"
        return value, _unit_key(found.group(1), found.group(2))
    return text, None


def _same_unit(unit: str, units: set[str]) -> bool:
    """'inches' is 'inch', 'cm^2' is 'cm^2' (plurals; the power must agree)."""
    def forms(key: str) -> set[str]:
        name, _, power = key.partition("^")
        names = {name, name[:-1] if name.endswith("s") else name, name[:-2] if name.endswith("es") else name}
        return {n + (f"^{power}" if power else "") for n in names}

    return any(forms(unit) & forms(other) for other in units)


def _plain(text: str) -> str:
    """The answer with typography removed (`$`, spaces, `\\left`, `\\,`, `\\text{}` wrappers, `\\dfrac`): two
    answers that read the same here are the same answer whatever math-verify makes of them ('b > a > c')."""
    text = re.sub(r"\\(?:text|mbox|textrm|textnormal|mathrm)\s*\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\(?:left|right|displaystyle)(?![A-Za-z])", "", text)
    text = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", text)
    return re.sub(r"\s+|(?<!\\)\$", "", _SPACING.sub("", text))


def _one_to_one(golds: list[str], answers: list[str], equal) -> bool:
    """Whether `answers` pairs off with `golds` (order-free). Greedy: exact for an equivalence like equality."""
    if len(golds) != len(answers):
        return False
    unused = list(answers)
    for gold in golds:
        match = next((index for index, answer in enumerate(unused) if equal(gold, answer)), None)
        if match is None:
            return False
        del unused[match]
    return True


@lru_cache(maxsize=16384)
def _set_and_unit_equal(gold: str, answer: str, timeout_seconds: int | None) -> bool:
    """`answer` against `gold` as answer sets with the gold's units stripped from both (module note above)."""
    if _plain(gold) == _plain(answer):
        return bool(_plain(gold))
    golds = [split_unit(member) for member in answer_members(gold)]
    units = {unit for _, unit in golds if unit is not None}
    answers = []
    for member in answer_members(answer):
        value, unit = split_unit(member)
        answers.append(value if unit is not None and _same_unit(unit, units) else member)
    if len(golds) == 1 and not units and len(answers) == 1:  # no set, no unit: the whole comparison has spoken
        return False
    return _one_to_one([value for value, _ in golds], answers, lambda g, a: _plain(g) == _plain(a)
                       or _math_equal(g, a, True, timeout_seconds))


def _percent_as_fraction_equal(gold: str, answer: str, timeout_seconds: int | None) -> bool:
    """A one-member gold in percent ('5.3\\%') against its fraction ('0.053'), as Qwen2.5-Math's grader allows."""
    members = answer_members(gold)
    if len(members) != 1:
        return False
    value, unit = split_unit(members[0])
    return unit == "%" and _math_equal(f"\\frac{{{value}}}{{100}}", answer, True, timeout_seconds)


class MathAnswerChecker:
    """MATH-style answers: strict = the last `\\boxed{...}` of the output; flexible = that box, else
    the answer math-verify's own extraction finds in the whole text (a `final answer is ...` phrase,
    then the last LaTeX or plain expression). Both are compared with the gold by math-verify's `verify`
    (1/2 = 0.5 = \\frac12, {1,2} = {2,1}, intervals, equations like x=5 against 5), each parse and
    comparison under `timeout_seconds` (signal-based: enforced on the main thread only; elsewhere
    checks run without a limit and a warning says so); failing that, as answer sets with the gold's units
    stripped (`equal`). The flexible reading also takes boxes written side by side as one answer
    (`\\boxed{2} or \\boxed{-2}`) and a percent gold's fraction (0.053 for 5.3\\%)."""

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
        """Whether `answer` (a bare answer, e.g. a box's content) is equivalent to `gold`: math-verify on the
        whole, or else member by member as answer sets ('2 or -2' = '-2, 2'; '2' is not '2 or -2') with the
        units the gold gives stripped from both ('20' = '20 cm^2' = '20 \\text{cm}^2')."""
        gold, timeout = gold.strip(), self._timeout()
        return _math_equal(gold, answer, True, timeout) or _set_and_unit_equal(gold, answer, timeout)

    def check(self, output: str, gold: str) -> Verdict:
        gold, timeout = gold.strip(), self._timeout()
        strict = last_boxed(output)
        if strict is not None:
            if self.equal(gold, strict):
                return Verdict(strict, True, strict, True)
            run = boxed_run(output)  # the flexible reading of several boxes: one answer set
            flexible = " or ".join(run) if run is not None else strict
            correct_flexible = ((run is not None and self.equal(gold, flexible))
                                or _percent_as_fraction_equal(gold, flexible, timeout))
            return Verdict(strict, False, flexible, correct_flexible)
        flexible = _first_string(_math_parse(output, False, timeout))
        correct_flexible = flexible is not None and (
            _math_equal(gold, output, False, timeout) or _set_and_unit_equal(gold, flexible, timeout)
            or _percent_as_fraction_equal(gold, flexible, timeout))
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
