"""The embedded default task: seeded multi-step arithmetic word problems in GSM8K format.

A problem is a start amount followed by `steps` changes (buy, lose, ...); the question asks for the
final amount. The answer has one equation per line and ends with `#### <number>`, exactly like GSM8K:

    question: "Ann has 7 apples. Ann finds 5 more. Ann loses 3. How many apples does Ann have now?"
    answer:   "7 + 5 = 12\n12 - 3 = 9\n#### 9"

Everything is a pure function of the config (seed, sizes, ranges), so the same command always sees
the same data; the test split never repeats a training question.
"""
from __future__ import annotations

import random
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
GENERATOR_VERSION = 2  # 2: distractor sentences

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


def generate_problem(spec: ArithSpec, rng: random.Random) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(1, spec.start_max)
    sentences = [OPENING.format(name=name, amount=value, item=item)]
    lines = []
    for _ in range(rng.randint(spec.min_steps, spec.max_steps)):
        choices = [op for op in spec.operations if len(_legal_amounts(spec, op, value)) > 0]
        operation = rng.choice(choices)
        amount = rng.choice(_legal_amounts(spec, operation, value))
        new_value = _apply(operation, value, amount)
        sentences.append(rng.choice(CHANGES[operation]).format(name=name, amount=amount))
        lines.append(f"{value} {SYMBOL[operation]} {amount} = {new_value}")
        value = new_value
    if spec.distractors_max:  # drawn after the changes, so that distractors_max=0 leaves version-1 problems as they were
        other = rng.choice([n for n in NAMES if n != name])
        for _ in range(rng.randint(0, spec.distractors_max)):
            sentence = rng.choice(DISTRACTORS).format(other=other, amount=rng.randint(1, spec.operand_max), item=item)
            sentences.insert(rng.randint(1, len(sentences)), sentence)  # anywhere after the opening
    sentences.append(QUESTION.format(item=item, name=name))
    lines.append(f"#### {value}")
    return {"question": " ".join(sentences), "answer": "\n".join(lines)}


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
