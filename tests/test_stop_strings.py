"""Few-shot prompts stop at the next exemplar: the stop strings each prompt format gets (framework/data/prompts.py),
that the transformers engine ends a sequence there so the scored answer is the model's first one, and that every
generating stage of a job asks for them. The vLLM engine's side: tests/test_vllm_engine.py (the vLLM tier)."""
from __future__ import annotations

import json

import pytest

import stop_model
from conftest import FAST, FAST_TRAINING, compose_config
from framework import evaluation
from framework.data.benchmarks import (GSM8KDatasetConfig, MathDatasetConfig, ProntoQADatasetConfig, load_gsm8k)
from framework.data.prompts import few_shot_stop
from framework.decoding import BeamConfig, BeamDecoder, GreedyConfig, GreedyDecoder, SampleConfig, SampleDecoder
from framework.generation import TransformersEngine

QUESTION_STOP = ("\n\nQuestion:",)


# ---------------------------------------------------------------------------- what each prompt format stops at
@pytest.mark.parametrize("config, stop", [
    (GSM8KDatasetConfig(), "\n\nQuestion:"),
    (MathDatasetConfig(), "\n\nProblem:"),
    (ProntoQADatasetConfig(), "\n\n"),  # its template starts with the question: the separator alone
])
def test_a_few_shot_prompt_stops_where_the_next_exemplar_begins(config, stop):
    assert few_shot_stop(config.prompt_template, config.few_shot_separator) == (stop,)


def test_exemplars_with_no_separator_and_no_text_before_the_question_have_no_stop_string():
    assert few_shot_stop("{question}\nAnswer:", "") == ()


def test_the_data_carries_the_stop_strings_of_few_shot_prompts_only(tmp_path):
    directory = stop_model.write_dataset(tmp_path / "gsm8k")
    few_shot = stop_model.load_few_shot(directory)
    assert few_shot.stop == QUESTION_STOP and few_shot.fingerprint["stop"] == list(QUESTION_STOP)
    assert few_shot.without_labels().stop == QUESTION_STOP  # label-free methods sample with them too
    for prompt_format in ("zero_shot", "chat"):
        data = load_gsm8k(GSM8KDatasetConfig(path=str(directory), prompt_format=prompt_format))
        assert data.stop == () and "stop" not in data.fingerprint  # zero-shot keys stay as they were


# ---------------------------------------------------------------------------- a model that goes on writing
@pytest.fixture(scope="module")
def writer(tmp_path_factory):
    """(few-shot task data, the transformers engine on a model that writes the answer and then a next exemplar)."""
    data = stop_model.load_few_shot(stop_model.write_dataset(tmp_path_factory.mktemp("gsm8k")))
    tokenizer = stop_model.char_tokenizer()
    return data, TransformersEngine(stop_model.trained_model(tokenizer, data.test["prompt"][0]), tokenizer)


def score(data, decoder, engine) -> tuple[float, list[str]]:
    decoding = decoder.decode(engine, list(data.test["prompt"]), progress=False)
    metrics, records = evaluation.score(data.test, decoding, data.checker, decoder)
    return metrics["accuracy"], [c.text for decoded in decoding.outputs for c in decoded.candidates]


def test_without_stop_strings_the_model_is_scored_on_the_exemplar_it_invents(writer):
    data, engine = writer
    accuracy, (text,) = score(data, GreedyDecoder(GreedyConfig(max_new_tokens=stop_model.MAX_NEW_TOKENS)), engine)
    assert text == stop_model.CONTINUATION  # the model did go on to a next "Question:"
    assert data.checker.extract(text) == stop_model.INVENTED and accuracy == 0.0


@pytest.mark.parametrize("decoder", [
    GreedyDecoder(GreedyConfig(max_new_tokens=stop_model.MAX_NEW_TOKENS), stop=QUESTION_STOP),
    BeamDecoder(BeamConfig(max_new_tokens=stop_model.MAX_NEW_TOKENS, num_beams=2), stop=QUESTION_STOP),
    SampleDecoder(SampleConfig(max_new_tokens=stop_model.MAX_NEW_TOKENS, samples_per_prompt=2, temperature=0.05),
                  seed=0, stop=QUESTION_STOP),
], ids=["greedy", "beam", "sample"])
def test_with_the_datas_stop_strings_the_first_answer_is_scored(writer, decoder):
    data, engine = writer
    accuracy, texts = score(data, decoder, engine)
    assert texts == [stop_model.ANSWER] * len(texts) and accuracy == 1.0


# ---------------------------------------------------------------------------- every stage asks for them
@pytest.mark.slow  # two small jobs through the launcher
def test_every_generating_stage_of_a_few_shot_job_asks_for_the_stop_strings(tmp_path, monkeypatch):
    """The sampled set and the premises' greedy pass (bon_sft), the rationale set and exploration (self_explore),
    and each job's evaluation: every Request the engine gets carries the data's stop strings."""
    from framework.data.loaders import ArithDatasetConfig, load_arith
    from framework.job import run

    rows = load_arith(ArithDatasetConfig(train_size=12, test_size=3))
    directory = tmp_path / "gsm8k"
    directory.mkdir()
    for split in ("train", "test"):
        with (directory / f"{split}.jsonl").open("w") as handle:
            for question, answer in zip(getattr(rows, split)["question"], getattr(rows, split)["completion"]):
                handle.write(json.dumps({"question": question, "answer": answer}) + "\n")
    asked = []
    original = TransformersEngine.generate

    def recording(self, prompts, request, **kwargs):
        asked.append((request.samples_per_prompt, request.temperature, request.stop))
        return original(self, prompts, request, **kwargs)

    monkeypatch.setattr(TransformersEngine, "generate", recording)
    dataset = ["dataset=gsm8k", f"dataset.path={directory}", "dataset.prompt_format=few_shot",
               "dataset.few_shot_examples=1", "dataset.max_new_tokens=12"]
    sampling = ["algorithm.starting_point=base", "algorithm.max_new_tokens=12", "algorithm.require_finished=false",
                "algorithm.train_prompts=4"]
    jobs = {"bon_sft": ["algorithm=bon_sft", *sampling, "algorithm.samples_per_prompt=3", "algorithm.prompt_pool=test"],
            "self_explore": ["algorithm=self_explore", *sampling, "algorithm.rationales_per_question=2",
                             "algorithm.on_empty=skip_training", "algorithm.use_rft=false",
                             "algorithm.explored_rationales=all_incorrect", "algorithm.continuations_per_step=2",
                             "algorithm.continuation_max_new_tokens=12"]}
    for name, overrides in jobs.items():
        run(compose_config([*FAST, *FAST_TRAINING, *dataset, *overrides, "decoder=greedy"], tmp_path / "cache"),
            tmp_path / name)
    assert {stop for _, _, stop in asked} == {QUESTION_STOP}
    # the sampled set (3 samples), the rationale set and exploration (2), greedy passes: evaluation and premises
    assert {(samples, temperature > 0) for samples, temperature, _ in asked} == {(3, True), (2, True), (1, False)}
    assert json.loads((tmp_path / "bon_sft" / "results.json").read_text())["premises"]["greedy_accuracy"] >= 0
