import re

from framework.data import arith
from framework.data.answers import extract_strict
from framework.data.loaders import ArithDatasetConfig, load_arith
from framework.tiny import build_tokenizer

SPEC = ArithDatasetConfig().spec()


def _check_answer(row):
    """Every line is a correct equation chaining from the last one (the running amount first, or second in a commuted
    addition or product); the final line is '#### value'."""
    *steps, final = row["answer"].split("\n")
    value = None
    for line in steps:
        left, operator, right, _, result = line.split(" ")
        left, right, result = int(left), int(right), int(result)
        assert value is None or left == value or (operator in "+*" and right == value)
        assert result == {"+": left + right, "-": left - right, "*": left * right}[operator]
        assert 0 <= result <= SPEC.value_max
        value = result
    assert final == f"#### {value}" and extract_strict(row["answer"]) == str(value)
    return len(steps)


def test_generator_is_deterministic_and_well_formed():
    first = arith.generate_splits(SPEC, {"train": 200, "test": 50}, seed=3)
    assert first == arith.generate_splits(SPEC, {"train": 200, "test": 50}, seed=3)
    assert first != arith.generate_splits(SPEC, {"train": 200, "test": 50}, seed=4)
    step_counts = {_check_answer(row) for rows in first.values() for row in rows}
    assert step_counts == {2, 3, 4}
    for row in first["train"]:
        assert re.fullmatch(r"[A-Z][a-z]+ has \d+ [a-z]+\. .*How many [a-z]+ does [A-Z][a-z]+ have now\?", row["question"])


def test_splits_never_share_a_question():
    splits = arith.generate_splits(SPEC, {"train": 1000, "test": 200}, seed=0)
    assert not {r["question"] for r in splits["train"]} & {r["question"] for r in splits["test"]}


def test_keys_shape_the_problems():
    spec = ArithDatasetConfig(min_steps=1, max_steps=1, operations=["mul"], start_max=5).spec()
    rows = arith.generate_splits(spec, {"train": 20}, seed=0)["train"]
    assert all(row["answer"].count("\n") == 1 and " * " in row["answer"] for row in rows)


def test_impossible_sizes_fail_clearly():
    import pytest

    from framework.errors import ConfigError

    config = ArithDatasetConfig(min_steps=1, max_steps=1, start_max=1, operand_max=1, operations=["add"],
                                distractors_max=0, train_size=280, test_size=20)  # 12 names x 8 items x 3 verbs = 288
    with pytest.raises(ConfigError, match="could only generate"):
        load_arith(config)


def test_loader_columns_and_gold_answers():
    data = load_arith(ArithDatasetConfig(train_size=10, test_size=5))
    assert data.train.column_names == ["question", "prompt", "completion", "gold_answer"]
    row = data.test[0]
    assert row["prompt"] == row["question"] + "\n"
    assert row["gold_answer"] == row["completion"].rsplit("#### ", 1)[1]


def test_tokenizer_round_trips_generated_text_without_unknowns():
    tokenizer = build_tokenizer()
    for row in arith.generate_splits(SPEC, {"train": 100}, seed=1)["train"]:
        text = row["question"] + "\n" + row["answer"]
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    # a prompt tokenised alone is a prefix of prompt + completion (TRL's completion mask relies on it)
    prompt, completion = "Ann has 3 pens.\n", "3 + 4 = 7\n#### 7"
    assert tokenizer(prompt + completion)["input_ids"][: len(tokenizer(prompt)["input_ids"])] == tokenizer(prompt)["input_ids"]


def test_a_distractor_is_about_somebody_else_and_left_out_of_the_solution():
    import random

    from framework.data import arith

    spec = arith.ArithSpec(2, 3, 20, 10, 50, 3, ("add", "sub"), distractors_max=1)
    rng = random.Random(0)
    seen = 0
    for _ in range(200):
        row = arith.generate_problem(spec, rng)
        name = row["question"].split()[0]
        sentences = row["question"].split(". ")
        others = [s for s in sentences[1:] if not s.startswith(name) and not s.startswith("How")]
        seen += len(others)
        assert len(others) <= 1
        # the solution has one line per change of `name`, plus the answer line
        changes = [s for s in sentences[1:] if s.startswith(name)]
        assert len(row["answer"].splitlines()) == len(changes) + 1
    assert 50 < seen < 150  # drawn from [0, 1] per problem


# ---------------------------------------------------------------------------- version 3: several correct solutions
ANY_ORDER = ArithDatasetConfig(solution_order="any", commute_additions=0.5).spec()


def test_any_order_demonstrations_vary_and_every_one_passes_the_exact_step_check():
    rows = arith.generate_splits(ANY_ORDER, {"train": 400}, seed=0)["train"]
    orders_differ = commuted = 0
    for row in rows:
        steps = row["answer"].split("\n")
        assert arith.first_wrong_step(row["start"], row["changes"], steps) is None, row
        written = [line for line in steps[:-1]]
        story = []
        value = row["start"]
        for operation, amount in row["changes"]:
            new = {"add": value + amount, "sub": value - amount}[operation]
            story.append(f"{value} {arith.SYMBOL[operation]} {amount} = {new}")
            value = new
        orders_differ += [line.split(" = ")[1] for line in written] != [line.split(" = ")[1] for line in story]
        commuted += any(line.split(" ")[2] != str(amount) and " + " in line
                        for line, (_, amount) in zip(written, row["changes"]))
    assert orders_differ > 100 and commuted > 100  # the demonstrations are not one text per problem


def test_the_exact_step_check_accepts_any_valid_order_and_finds_the_first_wrong_step():
    start, changes = 16, [["add", 4], ["sub", 6], ["add", 1]]  # 16 + 4 - 6 + 1 = 15
    check = lambda *steps: arith.first_wrong_step(start, changes, list(steps))  # noqa: E731
    assert check("16 + 4 = 20", "20 - 6 = 14", "14 + 1 = 15", "#### 15") is None
    assert check("16 - 6 = 10", "1 + 10 = 11", "11 + 4 = 15", "#### 15") is None  # another order, commuted
    assert check("16 + 4 = 20", "20 - 6 = 14") is None  # every step written so far is right
    assert check("16 + 4 = 21", "21 - 6 = 15", "15 + 1 = 16", "#### 16") == 1  # an arithmetic fact wrong
    assert check("16 + 4 = 20", "20 - 3 = 17") == 2  # an amount the problem does not have (a distractor's)
    assert check("16 + 4 = 20", "20 + 4 = 24") == 2  # a change applied twice
    assert check("16 + 4 = 20", "4 - 6 = -2") == 2  # not the running amount
    assert check("6 - 16 = -10") == 1  # subtraction is not commutative
    assert check("16 + 4 = 20", "#### 20") == 2  # the answer before every change is applied
    assert check("16 + 4 = 20", "20 - 6 = 14", "14 + 1 = 15", "#### 14") == 4  # the wrong total
    assert check("the total is 15") == 1


def test_version_2_problems_are_unchanged_by_the_new_keys_at_their_defaults():
    version_2 = ArithDatasetConfig(solution_order="story", commute_additions=0.0).spec()
    story = arith.generate_splits(version_2, {"train": 50}, seed=1)["train"]
    for row in story:  # the demonstration is the question's order, each addition running amount first
        value = row["start"]
        for line, (operation, amount) in zip(row["answer"].split("\n"), row["changes"]):
            assert line.startswith(f"{value} {arith.SYMBOL[operation]} {amount} = ")
            value = {"add": value + amount, "sub": value - amount}[operation]


def test_the_held_out_pool_is_disjoint_and_leaves_train_and_test_as_they_were():
    plain = load_arith(ArithDatasetConfig(train_size=100, test_size=50, heldout_size=0))
    pooled = load_arith(ArithDatasetConfig(train_size=100, test_size=50, heldout_size=60))
    assert plain.heldout is None and len(pooled.heldout) == 60
    assert list(plain.train["prompt"]) == list(pooled.train["prompt"])
    assert list(plain.test["prompt"]) == list(pooled.test["prompt"])
    assert not set(pooled.heldout["prompt"]) & (set(pooled.train["prompt"]) | set(pooled.test["prompt"]))
    assert pooled.without_labels().heldout.column_names == ["question", "prompt"]
