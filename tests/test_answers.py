import pytest

from framework.data.answers import NumericAnswerChecker, extract_flexible, extract_strict, normalize_number


@pytest.mark.parametrize("text, expected", [
    ("1,234", "1234"), ("$5.00", "5"), ("7.", "7"), ("-3", "-3"), ("0.50", "0.5"), ("-0", "0"), ("abc", None),
    ("", None), (None, None),
])
def test_normalize_number_matches_hand_written_canonical_forms(text, expected):
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
def test_strict_extraction_reads_only_the_final_answer_line(text, expected):
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


# ---------------------------------------------------------------------------- real data: every gold reads back
import json  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

from framework.data import answers  # noqa: E402
from framework.data.answers import (GaokaoAnswerChecker, LetterAnswerChecker, MathAnswerChecker,  # noqa: E402
                                    Verdict, last_boxed, option_letters)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _rows(path):
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def test_every_gsm8k_test_gold_extracts_from_its_own_answer():
    checker = NumericAnswerChecker()
    rows = _rows(DATA / "gsm8k/test.jsonl")
    assert len(rows) == 1319
    for line, row in enumerate(rows, start=1):
        written = row["answer"].split("####")[-1].strip().replace(",", "")  # the data README's own recipe
        gold = checker.gold_from_solution(row["answer"])
        assert gold == normalize_number(written) and gold is not None, f"test.jsonl:{line}"
        assert checker.check(row["answer"], gold).correct, f"test.jsonl:{line}"
        assert not checker.check(row["answer"] + " 1", str(int(float(gold)) + 1)).correct  # another number


@pytest.fixture(scope="module")
def math500():
    return _rows(DATA / "math/math500_test.jsonl")


def test_every_math500_boxed_answer_verifies_equal_to_its_answer_field(math500):
    """All 500, no exceptions: the last \\boxed{} of each solution is equivalent to the `answer` field."""
    checker = MathAnswerChecker()
    assert len(math500) == 500
    failures = [(row["unique_id"], row["answer"], last_boxed(row["solution"])) for row in math500
                if not checker.check(row["solution"], row["answer"]).correct]
    assert failures == []


def test_math500_answers_of_other_problems_are_rejected(math500):
    """Each gold against the next problem's answer: only pairs that really are the same value pass."""
    checker = MathAnswerChecker()
    accepted = {(row["answer"], other["answer"]) for row, other in zip(math500, math500[1:] + math500[:1])
                if checker.check(f"so \\boxed{{{other['answer']}}}", row["answer"]).correct}
    # the three neighbours with equal answers: 5 vs "x=5" counts (math-verify takes an equation's value)
    assert accepted == {("5", "x=5"), ("7", "7"), ("3", "3")}


# ---------------------------------------------------------------------------- \boxed{} by brace matching
@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{\\sqrt{2}}} done", "\\frac{1}{\\sqrt{2}}"),  # nested braces
    ("\\boxed{1} then \\boxed{\\{1,2\\}}.", "\\{1,2\\}"),  # the last box; escaped braces are content
    ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right."),  # an unbalanced escaped brace does not count
    ("the answer is $\\boxed 5$.", "5"),  # TeX's brace-less form takes one token
    ("\\fbox{7} wins", "7"),
    ("\\boxed { 12 }", "12"),
    ("cut off \\boxed{\\frac{1}{2}", None),  # never closes: no strict answer
    ("\\boxed{}", None),
    ("no box at all", None),
])
def test_last_boxed_returns_the_last_balanced_boxed_argument(text, expected):
    assert last_boxed(text) == expected


# ---------------------------------------------------------------------------- math-verify equivalence
@pytest.mark.parametrize("gold, answer, equal", [
    ("\\frac{1}{2}", "0.5", True),
    ("0.5", "\\dfrac12", True),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("\\{1,2\\}", "\\{1,2,3\\}", False),
    ("(1,3)", "(1,3)", True),
    ("(1,3)", "[1,3)", False),  # an interval's ends matter
    ("[2,+\\infty)", "[2,\\infty)", True),
    ("(-\\infty,-1)\\cup(1,+\\infty)", "(1,\\infty)\\cup(-\\infty,-1)", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("y=2x-1", "y=2x+1", False),
    ("3", "4", False),
    ("\\frac{3}{4}", "\\frac{4}{3}", False),
])
def test_math_checker_judges_equivalent_forms_equal_and_others_not(gold, answer, equal):
    checker = MathAnswerChecker()
    verdict = checker.check(f"Therefore the answer is $\\boxed{{{answer}}}$.", gold)
    assert verdict.extracted == answer and verdict.correct is equal and verdict.correct_flexible is equal


def test_math_flexible_reading_without_a_box():
    checker = MathAnswerChecker()
    verdict = checker.check("So the final answer is $\\frac{3}{4}$.", "0.75")
    assert (verdict.extracted, verdict.correct) == (None, False)
    assert verdict.extracted_flexible == "\\frac{3}{4}" and verdict.correct_flexible
    assert not checker.check("I got 5 and then 7", "6").correct_flexible
    assert checker.check("nothing mathematical", "6") == Verdict(None, False, None, False)


def test_math_extract_gives_equal_answers_one_key():
    """extract() is what majority voting counts: equal values written differently share a key."""
    checker = MathAnswerChecker()
    assert {checker.extract(f"\\boxed{{{a}}}") for a in ("\\frac34", "0.75", "\\dfrac{3}{4}")} == {"0.75"}
    assert checker.extract("\\boxed{\\{2,1\\}}") == checker.extract("\\boxed{\\{1, 2\\}}")
    assert checker.extract("\\boxed{3}") != checker.extract("\\boxed{4}")
    assert checker.extract("no box") is None


def test_math_checks_work_off_the_main_thread(caplog, monkeypatch):
    """math-verify's timeout needs SIGALRM (main thread only): elsewhere checks still run, with a warning."""
    monkeypatch.setattr(answers, "_warned_off_main_thread", False)
    checker, results = MathAnswerChecker(), {}

    def work():
        results["equal"] = checker.check("\\boxed{0.5}", "\\frac{1}{2}").correct
        results["unequal"] = checker.check("\\boxed{0.6}", "\\frac{1}{2}").correct

    with caplog.at_level(logging.WARNING):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    assert results == {"equal": True, "unequal": False}
    assert "timeout cannot be enforced" in caplog.text


def test_math_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout_seconds"):
        MathAnswerChecker(0)


# ---------------------------------------------------------------------------- option letters
@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("(B)", "B"), ("B) False", "B"), ("$C$", "C"), ("\\text{(C)}", "C"), ("B. 3", "B"),
    ("A, C", "AC"), ("C A", "AC"), ("ACD", "ACD"), ("A and D", "AD"),
    ("F", None), ("AA", None), ("Both", None), ("x", None),
])
def test_option_letters_finds_the_answer_letters_in_the_output(text, expected):
    assert option_letters(text, "ABCDE") == expected


@pytest.mark.parametrize("output, strict, flexible", [
    ("Max is a dumpus.\nMax is not sour.\nThe answer is B.", "B", "B"),
    ("the answer is (B)", "B", "B"),
    ("Answer: A", "A", "A"),
    ("\\boxed{A} but the answer is B.", "B", "B"),  # the later mark wins
    ("The answer is B, no: \\boxed{A}", "A", "A"),
    ("The statement is False.", None, "B"),  # an option word, flexible only
    ("I choose (A)", None, "A"),
    ("The answer is True.", None, "A"),
    ("A wumpus is a dumpus.", None, None),  # a capital A starting a sentence is no answer
])
def test_letter_checker_maps_words_to_letters_only_when_flexible(output, strict, flexible):
    checker = LetterAnswerChecker("AB", {"True": "A", "False": "B"})
    verdict = checker.check(output, "B")
    assert (verdict.extracted, verdict.extracted_flexible) == (strict, flexible)
    assert verdict.correct == (strict == "B") and verdict.correct_flexible == (flexible == "B")


# ---------------------------------------------------------------------------- GAOKAO: letters or math
def test_gaokao_fixture_golds_accept_equivalent_answers_and_reject_wrong_ones():
    rows = _rows(FIXTURES / "gaokao2023en_sample.jsonl")
    checker = GaokaoAnswerChecker()
    # an equivalent way to write each gold, and a wrong answer (hand-made, in file order)
    equivalent = ["\\{2,0,1\\}", "0.75", "(1,3)", "[2,\\infty)", "(1,\\infty)\\cup(-\\infty,-1)", "B", "\\text{C}",
                  "C, A", "(D)", "20", "0.375", "\\sqrt{8}", "y=2x-1", "\\pi"]
    wrong = ["\\{0,1,2,3\\}", "\\frac{4}{3}", "[1,3]", "(2,\\infty)", "(-1,1)", "A", "D", "A", "C", "21", "\\frac{5}{8}",
             "4", "y=2x+1", "2\\pi"]
    assert len(rows) == len(equivalent) == len(wrong) == 14
    for row, good, bad in zip(rows, equivalent, wrong):
        assert checker.check(f"We find $\\boxed{{{good}}}$.", row["answer"]).correct, (row["answer"], good)
        assert not checker.check(f"We find $\\boxed{{{bad}}}$.", row["answer"]).correct, (row["answer"], bad)
    assert [checker.is_choice(row["answer"]) for row in rows] == [False] * 5 + [True] * 4 + [False] * 5


def test_gaokao_multiple_choice_readings():
    checker = GaokaoAnswerChecker()
    assert checker.check("The answer is (C).", "C").correct
    assert checker.check("\\boxed{A}", "AC").correct is False  # half of a multiple-answer question is wrong
    verdict = checker.check("I think option C) is right", "$C$")
    assert not verdict.correct and verdict.correct_flexible
    assert checker.extract("\\boxed{\\text{(B)}}") == "B" and checker.extract("\\boxed{0.5}") == "0.5"


# ---------------------------------------------------------------------------- answer sets and units
@pytest.mark.parametrize("gold, answer, equal", [
    # sets: order-free, separators or / and / comma, members one to one
    ("$2$ or $-2$", "-2, 2", True),
    ("2 or -2", "-2 \\text{ or } 2", True),
    ("$0.05$ and $0.6$", "0.6 \\text{ and } 0.05", True),
    ("$48$, $384$", "384, 48", True),
    ("2 or 3", "2 or -2", False),
    ("$2$ or $-2$", "2 or 3", False),
    ("$2$ or $-2$", "2", False),  # one member of two
    ("$48$, $384$", "48", False),
    ("$2$ or $-2$", "2, 2", False),  # one gold member cannot pair with two answers
    ("$2$ or $-2$", "2, -2, 3", False),
    ("$35,000$", "35000", True),  # a thousands separator is no set
    # units the gold gives, stripped from both sides
    ("20 cm^2", "20", True),
    ("20 $cm^{2}$", "20", True),
    ("20 $cm^{2}$", "20 \\text{ cm}^2", True),
    ("20 $cm^{2}$", "20 cm^{2}", True),
    ("20", "21 cm^2", False),
    ("20 $cm^{2}$", "21 cm^2", False),
    ("20 $cm^{2}$", "21", False),
    ("$22.1cm^{2}$", "22.1", True),
    ("$36\\sqrt{7}cm^{3}$", "36\\sqrt{7}", True),
    ("$576\\pi\\;m^{2}$", "576\\pi", True),
    ("$576\\pi\\;m^{2}$", "567\\pi", False),
    ("3s^2", "3", False),  # a MATH gold in terms of s, not 3 square seconds
    ("864 \\mbox{ inches}^2", "864", True),
    ("90^\\circ", "90", True),
    ("90^\\circ", "91^\\circ", False),
    ("$5.3\\%$", "5.3", True),
    ("$5.3\\%$", "5.4\\%", False),
    ("$5.3\\%$", "0.053", False),  # a percent's fraction: flexible only (below)
    ("20 $cm^{2}$ or 30 $cm^{2}$", "30, 20", True),  # a set whose members carry units
    ("20 $cm^{2}$ or 30 $cm^{2}$", "20", False),
    # the same text once typesetting is removed
    ("b > a > c", "b>a>c", True),
    ("b > a > c", "a>b>c", False),
    ("\\text{east}", "\\text{west}", False),  # a word is no unit of itself
])
def test_answer_sets_and_units_judge_the_golds_values_right_and_other_values_wrong(gold, answer, equal):
    verdict = GaokaoAnswerChecker().check(f"So the answer is $\\boxed{{{answer}}}$.", gold)
    assert verdict.extracted == answer and verdict.correct is equal
    assert verdict.correct_flexible is (equal or answer == "0.053")


@pytest.mark.parametrize("answer, members", [
    ("$2$ or $-2$", ["2", "-2"]),
    ("$2$ or $-2$ or $\\frac{1}{2}$", ["2", "-2", "\\frac{1}{2}"]),
    ("x=2 \\text{ or } x=-2", ["x=2", "x=-2"]),
    ("48, 384", ["48", "384"]),
    ("(12,3,4), (6,5.4,7.6)", ["(12,3,4)", "(6,5.4,7.6)"]),
    ("(1,3)", ["(1,3)"]), ("(3,4]", ["(3,4]"]), ("\\{1\\pm\\sqrt{5},-2\\}", ["\\{1\\pm\\sqrt{5},-2\\}"]),
    ("35,000", ["35,000"]), ("11,\\! 111,\\! 100", ["11,\\! 111,\\! 100"]),  # digit groups
    ("576\\pi\\;m^{2}", ["576\\pi\\;m^{2}"]),  # `\;` is a space, not a separator
    ("\\text{necessary and sufficient}", ["\\text{necessary and sufficient}"]),
    ("the north border", ["the north border"]),  # 'or' inside a word
])
def test_answer_members_split_only_at_top_level_separators(answer, members):
    assert answers.answer_members(answer) == members


@pytest.mark.parametrize("member, split", [
    ("20 cm^{2}", ("20", "cm^2")), ("22.1cm^{2}", ("22.1", "cm^2")), ("5.4 \\text{ cents}", ("5.4", "cents")),
    ("\\frac{270}7\\text{ degrees}", ("\\frac{270}7", "°")), ("145^\\circ", ("145", "°")), ("5.3\\%", ("5.3", "%")),
    ("\\$32,\\!348", ("32,\\!348", "$")), ("5am", ("5", "am")),
    ("\\text{east}", ("\\text{east}", None)),  # nothing left: no unit
    ("3x cm", ("3x cm", None)), ("ab^{2}", ("ab^{2}", None)),  # bare letters after a non-number: no unit
    ("3s^2", ("3s^2", None)), ("20 m^2", ("20", "m^2")),  # one letter: a unit only after a space (MATH's 3s^2)
])
def test_split_unit_strips_units_only_after_a_value(member, split):
    assert answers.split_unit(member) == split


@pytest.mark.parametrize("output, gold, strict, flexible, extracted_flexible", [
    ("\\boxed{2} \\text{ or } \\boxed{-2}", "$2$ or $-2$", False, True, "2 or -2"),
    ("so $\\boxed{5}$, $\\boxed{9}$.", "$5$ or $9$", False, True, "5 or 9"),
    ("\\boxed{2} or \\boxed{3}", "$2$ or $-2$", False, False, "2 or 3"),
    ("\\boxed{2} is wrong, so \\boxed{-2}", "$2$ or $-2$", False, False, "-2"),  # words between: one answer
    ("\\boxed{2} \\text{ or } \\boxed{-2}", "2", False, False, "2 or -2"),  # a hedge is no set answer
    ("\\boxed{0.053}", "$5.3\\%$", False, True, "0.053"),  # a percent gold's fraction
    ("\\boxed{0.054}", "$5.3\\%$", False, False, "0.054"),
    ("\\boxed{0.053}", "5.3", False, False, "0.053"),  # no percent in the gold: no fraction
    ("The area is 20 cm^2.", "20 $cm^{2}$", False, True, "20"),  # no box: math-verify's reading, gold's unit off
])
def test_boxes_side_by_side_and_percent_fractions_count_for_the_flexible_judgement_only(
        output, gold, strict, flexible, extracted_flexible):
    verdict = MathAnswerChecker().check(output, gold)
    assert (verdict.correct, verdict.correct_flexible, verdict.extracted_flexible) == (strict, flexible,
                                                                                      extracted_flexible)


def test_every_math500_gold_accepts_its_own_values_written_bare(math500):
    """Each gold's members in reverse order with its units left off ('1,-2' -> '-2, 1', '90^\\circ' -> '90')."""
    checker = MathAnswerChecker()
    bare = {row["answer"]: ", ".join(answers.split_unit(member)[0]
                                     for member in reversed(answers.answer_members(row["answer"])))
            for row in math500}
    assert sum(value != gold for gold, value in bare.items()) >= 20  # sets and units: the rules were exercised
    assert [gold for gold, value in bare.items() if not checker.check(f"\\boxed{{{value}}}", gold).correct] == []
