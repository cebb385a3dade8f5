"""Whether the premises the compared methods rest on hold, measured on a job's own training artifacts.

The sharpening methods assume that the model's self-reward picks better answers than it writes greedily;
BoN-SFT that its targets are mostly right; DPO on self-ranked pairs that the preferred side is the right
one more often than not; Self-Explore that exploration finds the step where a rationale first went wrong;
GRPO that a question's samples differ in reward (a group of equal rewards has no advantage, so no gradient).
A method sees none of this (the label-free ones never see a gold answer): the launcher measures it after
training, with the labelled data, from what the method recorded in `ctx.artifacts`, and writes it to the
job's results.json under `premises`; the report's premises section reads it from there.

What each method records (the key in `ctx.artifacts`):
- `sampled_set`: (list of SampledPrompt, the model that sampled them): BoN-SFT and DPO (sharpening.py);
- `targets`: the (prompt, completion) rows SFT trains on: BoN-SFT;
- `pairs`: the (prompt, chosen, rejected) rows DPO trains on: DPO, outcome DPO;
- `exploration`: the ExplorationRecords of first-pit exploration: Self-Explore;
- `rationales`: (the rationale set, the kept-set keys): RFT, outcome DPO, Self-Explore. RFT assumes several
  distinct correct rationales per question (its data is up to M of them); on a task with one way to write each
  solution, deduplication leaves one, the demonstration itself.
- `reward_groups`: per training round, each group's mean reward and whether its rewards differ: GRPO.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

from framework.self_reward import SELECTOR_NAMES, select


def _gold_by_prompt(labelled) -> dict[str, str]:
    """Every labelled prompt's gold answer: the training split, the test split and the held-out pool (the label-free
    methods may sample any of them, `algorithm.prompt_pool`)."""
    gold = {}
    for split in (labelled.heldout, labelled.test, labelled.train):
        if split is not None and "gold_answer" in split.column_names:
            gold.update(zip(split["prompt"], split["gold_answer"]))
    return gold


def sampled_set_premises(sampled, gold: dict[str, str], checker, greedy_correct: dict[str, bool] | None) -> dict:
    """On the prompts the sharpening methods sample: each self-reward's best-of-N accuracy, one sample's
    accuracy (the sampling temperature's), pass@N, and the sampling model's greedy accuracy on them."""
    rows = [(prompt, [checker.check(c.text, gold[prompt.prompt]).correct for c in prompt.candidates])
            for prompt in sampled if prompt.candidates and prompt.prompt in gold]
    if not rows:
        return {}
    values = {"prompts": len(rows),
              "sample_accuracy": sum(sum(c) / len(c) for _, c in rows) / len(rows),
              "pass_at_n": sum(any(c) for _, c in rows) / len(rows),
              "samples_per_prompt": max(len(c) for _, c in rows)}
    for selector in SELECTOR_NAMES:
        picks = [correct[select(selector, prompt.candidates, prompt.answers)] for prompt, correct in rows]
        values[f"best_of_n_{selector}"] = sum(picks) / len(picks)
    if greedy_correct is not None:
        values["greedy_accuracy"] = sum(greedy_correct[prompt.prompt] for prompt, _ in rows) / len(rows)
    return values


def targets_premises(targets: list[dict], gold: dict[str, str], checker) -> dict:
    """The share of SFT targets (BoN-SFT's picks) that reach the gold answer."""
    scored = [checker.check(row["completion"], gold[row["prompt"]]).correct for row in targets if row["prompt"] in gold]
    return {"targets": len(scored), "targets_right_share": sum(scored) / len(scored)} if scored else {}


def pairs_premises(pairs: list[dict], gold: dict[str, str], checker) -> dict:
    """How often a preference pair prefers a right answer to a wrong one, the reverse, or neither."""
    kinds = Counter()
    for row in pairs:
        if row["prompt"] not in gold:
            continue
        chosen = checker.check(row["chosen"], gold[row["prompt"]]).correct
        rejected = checker.check(row["rejected"], gold[row["prompt"]]).correct
        kinds["right_vs_wrong" if chosen and not rejected else "wrong_vs_right" if rejected and not chosen
              else "both_right" if chosen else "both_wrong"] += 1
    total = sum(kinds.values())
    if not total:
        return {}
    return {"pairs": total, **{f"pairs_{kind}_share": kinds[kind] / total
                               for kind in ("right_vs_wrong", "wrong_vs_right", "both_right", "both_wrong")}}


def first_wrong_step(steps: list[str], demonstration_steps: list[str]) -> int | None:
    """1-based index of the first step that differs from the demonstration's step at the same position
    (whitespace-stripped), or that the demonstration does not have; None when every step matches. Exact
    where a problem has one solution written one way (the embedded task); an approximation elsewhere."""
    for index, step in enumerate(steps):
        if index >= len(demonstration_steps) or step.strip() != demonstration_steps[index].strip():
            return index + 1
    return None


def pit_premises(records, demonstrations: dict[str, str], split: Callable[[str], list[str]],
                 exact: Callable[[str, list[str]], int | None] | None = None) -> dict:
    """Where exploration's first pits fall against each rationale's first wrong step: the task's exact check
    (`exact(prompt, steps)`, TaskData.first_wrong_step) where it has one, else the step that first differs from the
    demonstration (exact only where a problem has one solution written one way)."""
    where = Counter()
    for record in records:
        if record.pit is None or record.prompt not in demonstrations:
            continue
        if exact is not None:
            wrong = exact(record.prompt, [step.strip() for step in record.steps])
        else:
            wrong = first_wrong_step(record.steps, split(demonstrations[record.prompt]))
        where["no_wrong_step" if wrong is None else "at" if record.pit == wrong else
              "before" if record.pit < wrong else "after"] += 1
    total = sum(where.values())
    if not total:
        return {}
    return {"pits": total, **{f"pit_{kind}_first_wrong_step_share": where[kind] / total
                              for kind in ("at", "before", "after")},
            "pit_without_a_wrong_step_share": where["no_wrong_step"] / total}


def rationale_premises(questions, kept_keys: dict) -> dict:
    """RFT's premise on the rationale set: distinct correct rationales per question, by the kept set's own
    deduplication (equation signatures for numeric answers, edit distance otherwise) but without its cap M, and
    how many of them the cap keeps; and the share of questions with at least one correct rationale."""
    from framework.algorithms.rationales import kept_set

    if not questions:
        return {}
    uncapped, _ = kept_set(questions, {**kept_keys, "max_correct_per_question": 10 ** 9})
    capped = [min(len(kept.correct), kept_keys["max_correct_per_question"]) for kept in uncapped]
    return {"rationale_questions": len(questions),
            "distinct_correct_per_question": sum(len(kept.correct) for kept in uncapped) / len(questions),
            "kept_correct_per_question": sum(capped) / len(questions),
            "questions_with_a_correct_share": sum(bool(kept.correct) for kept in uncapped) / len(questions)}


def reward_group_premises(rounds: list[dict]) -> dict:
    """GRPO's premise from its recorded rounds (algorithms/grpo.py `group_summary`): the share of groups whose
    rewards differ, overall and in the first and last tenth of the rounds (as the model learns, more groups
    are all right); the shares of groups all right and all wrong (reward 1 = right: the answer checker's);
    the mean reward in the first and last tenth."""
    groups = [(mean, differ) for row in rounds for mean, differ in zip(row["mean_reward"], row["rewards_differ"])]
    if not groups:
        return {}
    tenth = max(1, len(rounds) // 10)

    def share_differ(part: list[dict]) -> float:
        flags = [differ for row in part for differ in row["rewards_differ"]]
        return sum(flags) / len(flags)

    def mean_reward(part: list[dict]) -> float:
        means = [mean for row in part for mean in row["mean_reward"]]
        return sum(means) / len(means)

    return {"reward_rounds": len(rounds), "reward_groups": len(groups),
            "groups_rewards_differ_share": sum(differ for _, differ in groups) / len(groups),
            "groups_rewards_differ_share_first_tenth": share_differ(rounds[:tenth]),
            "groups_rewards_differ_share_last_tenth": share_differ(rounds[-tenth:]),
            "groups_all_right_share": sum(not differ and mean == 1.0 for mean, differ in groups) / len(groups),
            "groups_all_wrong_share": sum(not differ and mean == 0.0 for mean, differ in groups) / len(groups),
            "reward_first_tenth": mean_reward(rounds[:tenth]), "reward_last_tenth": mean_reward(rounds[-tenth:])}


def measure(artifacts: dict, labelled, checker, greedy: Callable | None = None) -> dict:
    """Every premise the job's artifacts allow; `labelled`: the task data with gold answers; `greedy(model,
    prompts) -> texts`: the sampling model's greedy outputs (None: that comparison is left out)."""
    gold = _gold_by_prompt(labelled)
    values = {}
    if "sampled_set" in artifacts:
        sampled, model = artifacts["sampled_set"]
        greedy_correct = None
        if greedy is not None:
            prompts = [prompt.prompt for prompt in sampled if prompt.prompt in gold]
            greedy_correct = {prompt: checker.check(text, gold[prompt]).correct
                              for prompt, text in zip(prompts, greedy(model, prompts))}
        values.update(sampled_set_premises(sampled, gold, checker, greedy_correct))
    if "targets" in artifacts:
        values.update(targets_premises(artifacts["targets"], gold, checker))
    if "pairs" in artifacts:
        values.update(pairs_premises(artifacts["pairs"], gold, checker))
    if "exploration" in artifacts:
        records, split = artifacts["exploration"]
        values.update(pit_premises(records, dict(zip(labelled.train["prompt"], labelled.train["completion"])), split,
                                   labelled.first_wrong_step))
    if "rationales" in artifacts:
        values.update(rationale_premises(*artifacts["rationales"]))
    if "reward_groups" in artifacts:
        values.update(reward_group_premises(artifacts["reward_groups"]))
    return values
