"""The embedded default task: seeded multi-step arithmetic word problems in GSM8K format.

A problem is a start amount followed by `steps` changes (buy, lose, ...); the question asks for the
final amount. The answer has one equation per line and ends with `#### <number>`, exactly like GSM8K:

    question: "Ann has 7 apples. Ann finds 5 more. Ann loses 3. How many apples does Ann have now?"
    answer:   "7 + 5 = 12\n12 - 3 = 9\n#### 9"

A problem has several correct solutions when `solution_order` is `any` (the changes applied in any order that
keeps the running amount in range: "12 - 3 = 9" first, then "9 + 5 = 14") and `commute_additions` > 0 (an
addition written amount first: "5 + 7 = 12"). The demonstration is one of them, drawn at random, so correct
rationales sampled from a model differ the way the Self-Explore family's RFT assumes (several distinct correct
rationales per question). Whatever the order, a step is right exactly when it applies one of the problem's
not-yet-applied changes to the running amount with the right result, and the answer line is right when every
change has been applied: `first_wrong_step` is that check, exact for every ordering a model writes.

Everything is a pure function of the config (seed, sizes, ranges), so the same command always sees
the same data; the test split never repeats a training question.
"""
from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from dataclasses import dataclass

NAMES = ("Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jon", "Kim", "Leo")
ITEMS = ("apples", "coins", "books", "cards", "stamps", "marbles", "pens", "shells")
# Each change is (sentence template, operation); `{name}` and `{amount}` are filled in.
CHANGES = {
    "add": ("{name} buys {amount} more.", "{name} finds {amount} more.", "{name} gets {amount} more."),
    "sub": ("{name} loses {amount}.", "{name} sells {amount}.", "{name} gives away {amount}."),
    "mul": ("{name} ends up with {amount} times as many.",),
}
SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
OPENING = "{name} has {amount} {item}."
QUESTION = "How many {item} does {name} have now?"
# A distractor is a change that happens to somebody else: the solution must leave it out. It is where a
# model that tracks the wrong person, or copies every number it reads, goes wrong.
DISTRACTORS = ("{other} buys {amount} {item}.", "{other} loses {amount} {item}.", "{other} has {amount} {item}.")

# Bump when the generator changes what a config produces: cached stages keyed on the data go stale.
GENERATOR_VERSION = 3  # 2: distractor sentences; 3: solution orders and commuted additions, the problem's structure

# Largest number the task may produce; the embedded tokenizer has one token per number up to this. 199 (was 999
# before generator version 2): a vocabulary of 514 instead of 2,114 makes each tiny-model step ~35% cheaper.
NUMBER_TOKEN_MAX = 199


@dataclass(frozen=True)
class ArithSpec:
    min_steps: int
    max_steps: int
    start_max: int
    operand_max: int
    value_max: int
    multiplier_max: int
    operations: tuple[str, ...]
    distractors_max: int = 0  # sentences about another person, drawn uniformly from [0, distractors_max]
    solution_order: str = "story"  # story: the changes in the order the question tells them | any: a random valid order
    commute_additions: float = 0.0  # probability that an addition is written amount first ("5 + 7 = 12")


SOLUTION_ORDERS = ("story", "any")


def _apply(operation: str, value: int, amount: int) -> int:
    if operation == "add":
        return value + amount
    if operation == "sub":
        return value - amount
    return value * amount


def _legal_amounts(spec: ArithSpec, operation: str, value: int) -> range:
    """Amounts that keep the running value within [0, value_max]."""
    if operation == "add":
        return range(1, min(spec.operand_max, spec.value_max - value) + 1)
    if operation == "sub":
        return range(1, min(spec.operand_max, value) + 1)
    return range(2, min(spec.multiplier_max, spec.value_max // max(value, 1)) + 1)


def _valid_order(spec: ArithSpec, start: int, changes: list[tuple[str, int]]) -> bool:
    value = start
    for operation, amount in changes:
        value = _apply(operation, value, amount)
        if not 0 <= value <= spec.value_max:
            return False
    return True


def generate_problem(spec: ArithSpec, rng: random.Random) -> dict:
    """One problem: the question, its demonstration (`answer`) and its structure (`start`, `changes` in the
    question's order), from which every correct solution follows."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start = value = rng.randint(1, spec.start_max)
    sentences = [OPENING.format(name=name, amount=value, item=item)]
    changes = []
    for _ in range(rng.randint(spec.min_steps, spec.max_steps)):
        choices = [op for op in spec.operations if len(_legal_amounts(spec, op, value)) > 0]
        operation = rng.choice(choices)
        amount = rng.choice(_legal_amounts(spec, operation, value))
        sentences.append(rng.choice(CHANGES[operation]).format(name=name, amount=amount))
        changes.append((operation, amount))
        value = _apply(operation, value, amount)
    if spec.distractors_max:  # drawn after the changes, so that distractors_max=0 leaves version-1 problems as they were
        other = rng.choice([n for n in NAMES if n != name])
        for _ in range(rng.randint(0, spec.distractors_max)):
            sentence = rng.choice(DISTRACTORS).format(other=other, amount=rng.randint(1, spec.operand_max), item=item)
            sentences.insert(rng.randint(1, len(sentences)), sentence)  # anywhere after the opening
    sentences.append(QUESTION.format(item=item, name=name))
    order = changes
    if spec.solution_order == "any":  # drawn last: solution_order=story leaves version-2 problems as they were
        orders = [list(p) for p in dict.fromkeys(itertools.permutations(changes)) if _valid_order(spec, start, list(p))]
        order = rng.choice(orders)
    lines, value = [], start
    for operation, amount in order:
        new_value = _apply(operation, value, amount)
        swap = operation in COMMUTATIVE and spec.commute_additions > 0 and rng.random() < spec.commute_additions
        left, right = (amount, value) if swap else (value, amount)
        lines.append(f"{left} {SYMBOL[operation]} {right} = {new_value}")
        value = new_value
    lines.append(f"#### {value}")
    return {"question": " ".join(sentences), "answer": "\n".join(lines),
            "start": start, "changes": [[operation, amount] for operation, amount in changes]}


COMMUTATIVE = ("add", "mul")  # written either way round ("5 + 7", "7 + 5")
_STEP = re.compile(r"^\s*(\d+)\s*([-+*])\s*(\d+)\s*=\s*(\d+)\s*$")
_ANSWER = re.compile(r"^\s*####\s*(-?\d+)\s*$")
_OPERATION = {symbol: operation for operation, symbol in SYMBOL.items()}


def first_wrong_step(start: int, changes: list[list], steps: list[str]) -> int | None:
    """1-based index of the first step that no correct solution of the problem (start, changes) has, or None
    when every step written is right. A step is right when it applies one of the changes not applied yet to the
    running amount ("a op b = c" with the running amount as a, or as b for a commutative change) and states the
    result; the answer line is right when every change has been applied and it states the running amount. Exact
    for every order a solution may take (the problem's correct solutions are exactly the sequences it accepts)."""
    value, remaining = start, Counter((operation, int(amount)) for operation, amount in changes)
    for index, step in enumerate(steps, start=1):
        if (answer := _ANSWER.match(step)) is not None:
            return None if not +remaining and int(answer.group(1)) == value else index
        match = _STEP.match(step)
        if match is None:
            return index
        left, operation, right, result = int(match.group(1)), _OPERATION[match.group(2)], int(match.group(3)), \
            int(match.group(4))
        amount = right if left == value else left if operation in COMMUTATIVE and right == value else None
        if amount is None or remaining[(operation, amount)] == 0 or result != _apply(operation, value, amount):
            return index
        remaining[(operation, amount)] -= 1
        value = result
    return None


def generate_splits(spec: ArithSpec, sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    """Generate every split at once so no question appears in two splits (first split wins)."""
    seen: set[str] = set()
    splits = {}
    for split_index, (split, size) in enumerate(sizes.items()):
        rng = random.Random(f"arith/{seed}/{split_index}/{split}")
        rows, attempts = [], 0
        while len(rows) < size:
            attempts += 1
            if attempts > 50 * size + 1000:
                raise ValueError(
                    f"arith: could only generate {len(rows)} distinct '{split}' problems out of {size}; "
                    "widen the operand ranges or ask for fewer problems"
                )
            row = generate_problem(spec, rng)
            if row["question"] not in seen:
                seen.add(row["question"])
                rows.append(row)
        splits[split] = rows
    return splits


def vocabulary_words() -> list[str]:
    """Every word and symbol the generator can write (numbers excluded), for the embedded tokenizer."""
    texts = [OPENING, QUESTION, *DISTRACTORS, *SYMBOL.values(), "=", "####"]
    for templates in CHANGES.values():
        texts.extend(templates)
    words = set(NAMES) | set(ITEMS)
    for text in texts:
        for word in text.replace(".", " . ").replace("?", " ? ").split():
            if not word.startswith("{"):
                words.add(word)
    return sorted(words)
