"""How many real gold answers each answer-judging rule of framework/data/answers.py touches (docs/metrics.md).

    python benchmarks/answer_rules.py --gaokao <GAOKAO2023-En test.jsonl> \
        --math500 ../shared/data/math [--math ../shared/data/math] [--json figures.json]

Per dataset, over the golds the math checker judges (GAOKAO's option letters go to the letter checker):
    sets        golds that split into two or more members ('$2$ or $-2$')
    units       golds with a unit stripped, by unit ('20 $cm^{2}$' -> cm^2)
    values      the gold's own values written bare (members in reverse order joined by ', ', units left off)
                in one box: judged right by math-verify alone (the comparison before these rules) and by
                the checker's strict comparison now
    boxes       the same values of a set gold in separate boxes ('\\boxed{-2} or \\boxed{2}'): strict, flexible
    neighbours  each gold against the bare values of the next three golds: accepted by math-verify alone and
                now (wrong answers a new rule would accept show up here)
and `dropped_empty_gold`, the rows the loader leaves out because their gold is empty.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from framework.data import answers
from framework.data.benchmarks import (GaokaoDatasetConfig, Math500DatasetConfig, MathDatasetConfig, load_gaokao,
                                       load_math, load_math500)

NEIGHBOURS = 3


def bare_values(gold: str) -> list[str]:
    return [answers.split_unit(member)[0] for member in reversed(answers.answer_members(gold))]


def measure(data, math_checker) -> dict:
    golds = [gold for gold in data.test["gold_answer"]
             if not (hasattr(data.checker, "is_choice") and data.checker.is_choice(gold))]
    timeout = math_checker.timeout_seconds
    before = lambda gold, answer: answers._math_equal(gold.strip(), answer, True, timeout)  # math-verify alone
    sets = [gold for gold in golds if len(answers.answer_members(gold)) >= 2]
    units = Counter(unit for gold in golds for _, unit in map(answers.split_unit, answers.answer_members(gold))
                    if unit is not None)
    values = [", ".join(bare_values(gold)) for gold in golds]
    figures = {
        "rows": len(data.test) + data.dropped_empty_gold, "dropped_empty_gold": data.dropped_empty_gold,
        "math_golds": len(golds), "sets": len(sets), "golds_with_units": sum(
            any(answers.split_unit(m)[1] for m in answers.answer_members(gold)) for gold in golds),
        "units": dict(units.most_common()),
        "values_right_before": sum(before(gold, value) for gold, value in zip(golds, values)),
        "values_right_now": sum(math_checker.equal(gold, value) for gold, value in zip(golds, values)),
        "values_wrong_now": [(gold, value) for gold, value in zip(golds, values)
                             if not math_checker.equal(gold, value)],
    }
    boxes = [math_checker.check(" or ".join(f"\\boxed{{{v}}}" for v in bare_values(gold)), gold) for gold in sets]
    figures.update(set_boxes_strict=sum(v.correct for v in boxes),
                   set_boxes_flexible=sum(v.correct_flexible for v in boxes))
    pairs = [(gold, values[(index + shift) % len(golds)]) for index, gold in enumerate(golds)
             for shift in range(1, NEIGHBOURS + 1)]
    accepted_before = {pair for pair in pairs if before(*pair)}
    accepted_now = {pair for pair in pairs if math_checker.equal(*pair)}
    figures.update(neighbour_pairs=len(pairs), neighbours_accepted_before=len(accepted_before),
                   neighbours_accepted_now=len(accepted_now),
                   neighbours_newly_accepted=sorted(accepted_now - accepted_before))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gaokao", help="GAOKAO2023-En as one JSONL file (question, answer)")
    parser.add_argument("--math500", help="a directory holding math500_test.jsonl")
    parser.add_argument("--math", help="a directory holding MATH's test.jsonl (5,000 golds: minutes)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    loads = {"gaokao2023en": (args.gaokao, lambda path: load_gaokao(GaokaoDatasetConfig(path=path))),
             "math500": (args.math500, lambda path: load_math500(Math500DatasetConfig(path=path, train_file=None))),
             "math": (args.math, lambda path: load_math(MathDatasetConfig(path=path, train_file=None)))}
    results = {}
    for name, (path, load) in loads.items():
        if path is None:
            continue
        started = time.time()
        data = load(path)
        checker = getattr(data.checker, "math", data.checker)  # GAOKAO's math half
        results[name] = {**measure(data, checker), "seconds": round(time.time() - started, 1)}
        shown = {key: value for key, value in results[name].items()
                 if key not in ("values_wrong_now", "neighbours_newly_accepted")}
        print(f"{name}: {json.dumps(shown)}")
        for key in ("values_wrong_now", "neighbours_newly_accepted"):
            for gold, answer in results[name][key]:
                print(f"  {key}: gold {gold!r}, answer {answer!r}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
