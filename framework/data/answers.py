"""Final-answer extraction and checking for GSM8K-format answers (`... #### <number>`).

Two extractions, as lm-evaluation-harness reports them for GSM8K: `strict` reads the number after the
last `####` (the format the model was taught); `flexible` falls back to the last number anywhere in
the text. Accuracy is reported for both; `strict` is the headline. Written by hand because it is a
dozen lines of string handling: math-verify (MATH-style equivalence) arrives with the MATH datasets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

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
    extracted: str | None
    correct: bool
    extracted_flexible: str | None
    correct_flexible: bool


class NumericAnswerChecker:
    """Checks GSM8K-style outputs against a gold number."""

    name = "numeric"

    def gold_from_solution(self, solution: str) -> str | None:
        return extract_strict(solution)

    def extract(self, output: str) -> str | None:
        """The normalised final answer that `check` compares (strict), e.g. for majority voting."""
        return extract_strict(output)

    def check(self, output: str, gold: str) -> Verdict:
        strict = extract_strict(output)
        flexible = extract_flexible(output)
        gold_normal = normalize_number(gold)
        return Verdict(strict, strict is not None and strict == gold_normal,
                       flexible, flexible is not None and flexible == gold_normal)
