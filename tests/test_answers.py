import pytest

from framework.data.answers import NumericAnswerChecker, extract_flexible, extract_strict, normalize_number


@pytest.mark.parametrize("text, expected", [
    ("1,234", "1234"), ("$5.00", "5"), ("7.", "7"), ("-3", "-3"), ("0.50", "0.5"), ("-0", "0"), ("abc", None),
    ("", None), (None, None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("3 + 4 = 7\n#### 7", "7"),
    ("#### 1,000", "1000"),
    ("#### 12\nmore text #### 13", "13"),  # the last mark wins
    ("#### $18.00", "18"),
    ("the answer is 7", None),  # strict needs the mark
    ("#### seven", None),
    ("#### ", None),
    ("#### x 5", None),  # the number must come right after the mark
])
def test_extract_strict(text, expected):
    assert extract_strict(text) == expected


def test_extract_flexible_falls_back_to_last_number():
    assert extract_flexible("2 + 2 = 4, so 4 apples") == "4"
    assert extract_flexible("#### 9 and then 12") == "9"
    assert extract_flexible("no digits") is None


def test_checker_on_a_real_gsm8k_row():
    import json
    from pathlib import Path

    row = json.loads((Path(__file__).resolve().parents[2] / "shared/data/gsm8k/test.jsonl").open().readline())
    checker = NumericAnswerChecker()
    gold = checker.gold_from_solution(row["answer"])
    assert gold == row["answer"].split("####")[-1].strip().replace(",", "")
    assert checker.check(row["answer"], gold).correct
    verdict = checker.check("I think it is 3", gold)
    assert not verdict.correct and verdict.extracted is None and verdict.extracted_flexible == "3"
