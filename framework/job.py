"""One job, from a composed config to its results: what `python -m framework` runs for each job of a run or
sweep (the launcher, framework/__main__.py, only parses, refuses and dispatches here).

    validate      the composed config against the schemas: ConfigError before anything is built
    build         the data, the decoder, the stage store and the starting model
    train         the algorithm plugin from its starting context (SFT warm start, labels stripped for a
                  label-free method), then the method's control when its decoder asks for one
    evaluate      decode and score the test split (a stage), measure the premises, evaluate the control, then
                  score the model on each dataset of evaluation.datasets (a stage each, its own prompts and length)
    record        results.json, generations.jsonl and the W&B run

Everything that can be wrong with the input is checked before the first training step. Nothing here knows an
algorithm, dataset, decoder or model by name: each is looked up in the registry.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from framework import __version__, distributed, memory, plan, registry, tracking
from framework.config import evaluation_targets, to_validated
from framework.errors import ConfigError
from framework.jsonl import read_jsonl, write_jsonl
from framework.paths import require_writable_directory
from framework.results import ControlSummary, EvaluationSummary, JobResult

log = logging.getLogger("framework")


def _versions() -> dict:
    from importlib import metadata

    versions = {"framework": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "math-verify"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _cpu_model() -> str | None:
    """The CPU's model name: float reductions are summed in an order that depends on its instruction set, so two
    CPUs can give different numbers for the same commit (docs/reproducibility.md)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _hardware(runtime) -> dict:
    import torch

    info = {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "processes": distributed.world_size(),
            "device": runtime.device, "precision": runtime.precision}
    if runtime.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(runtime.device)
    return info


def _check_training_data(settings, algorithm, data) -> None:
    """Refuse, before anything is built, a training method on data it cannot train on."""
    if not algorithm.trains:
        return
    name = settings.algorithm.name
    if len(data.train) == 0:
        raise ConfigError(f"algorithm={name} trains, but dataset={settings.dataset.name} has no training split "
                          "(an evaluation-only dataset); use algorithm=none or give the dataset a training file")
    needs_demonstrations = (not algorithm.label_free
                            or getattr(settings.algorithm, "starting_point", "base") == "sft")
    missing = [column for column in ("completion", "gold_answer") if column not in data.train.column_names]
    if needs_demonstrations and missing:
        raise ConfigError(f"algorithm={name} needs worked solutions and gold answers in the training split, but "
                          f"dataset={settings.dataset.name} has no {missing} there")


def _evaluate(settings, policy, data, decoder, stages, runtime) -> tuple[dict, list[dict], bool]:
    """Decode and score the test split: a stage keyed by the policy, the decoder, the data and (for
    decoders that sample) the seed, so a rerun of a job (or of a whole sweep) reuses its evaluation.
    Every process of the job decodes its shards of the test split (framework/generation.py: generate_sharded;
    the decodings equal one process's), then the main process scores them, runs the diagnostics and writes the
    stage. Returns (metrics, records, reused) on the main process, (None, None, reused) on the others."""
    from framework import evaluation
    from framework.decoding import teacher_forced_logprobs
    from framework.generation import ShardedEngine, engine_identity, open_engine

    # Greedy and beam decoding draw no random numbers: their evaluation of a model is one entry for every
    # seed (the untrained `none` model is the same model under every seed, so its seeds share it).
    test = data.test
    if settings.decoder.max_problems is not None and settings.decoder.max_problems < len(test):
        test = test.select(range(settings.decoder.max_problems))  # the first N: every decoder's share is common
    spec = {"policy": policy.fingerprint, "decoder": vars(settings.decoder), "data": data.fingerprint,
            "seed": settings.seed if decoder.draws_samples else None, "diagnostics": settings.evaluation.diagnostics,
            "engine": engine_identity(settings.engine)}
    # the code that decodes and scores: this glue, the evaluation module, the decoder's and the checker's
    code = (__name__, "framework.evaluation", type(decoder).__module__, type(data.checker).__module__)
    # collective: every process generates; the number of processes stays out of the key (the same decodings)
    with stages.open("evaluation", spec, code=code, shared=True, collective=True, processes_in_key=False) as stage:
        reused = stage.done
        if not reused:
            decoded_at = time.time()
            log.info("decoding %d test prompts: its shards on rank %d of %d", len(test), distributed.rank(),
                     distributed.world_size())
            with open_engine(policy, settings.engine, runtime, settings.seed) as engine:
                # shards in the stage's checkpoints: an interrupted evaluation resumes where it stopped
                decoding = decoder.decode(ShardedEngine(engine, stage.checkpoints / "generation",
                                                        settings.engine.rows_per_shard), list(test["prompt"]))
                model = engine.transformers_model  # the same loaded model scores the gold (None: vLLM)
            summary = None
            if distributed.is_main_process():  # the others have every decoding too, but one process scores
                tokenizer = policy.load_tokenizer()
                metrics, records = evaluation.score(test, decoding, data.checker, decoder)  # with the decoder's own
                metrics["dropped_empty_gold"] = data.dropped_empty_gold  # test rows the loader left out, unscored
                metrics["decode_seconds"] = time.time() - decoded_at
                if settings.evaluation.diagnostics and "completion" in test.column_names:  # needs demonstrations
                    model = model if model is not None else policy.load_model(runtime)  # vllm: once it is asleep
                    gold_logprobs = teacher_forced_logprobs(model, tokenizer, list(test["prompt"]),
                                                            list(test["completion"]),
                                                            settings.evaluation.sequences_per_forward)
                    metrics.update(evaluation.optimism_diagnostics(records, gold_logprobs))
                metrics["generated_tokens"] = sum(record["num_tokens"] for record in records)
                output = stage.new_output_dir()
                write_jsonl(output / "generations.jsonl", records)
                (output / "metrics.json").write_text(json.dumps(metrics, sort_keys=True, default=str))
                summary = {"compute": {"generated_tokens": metrics["generated_tokens"]}}
            del model
            stage.commit(summary)
        if not distributed.is_main_process():
            return None, None, reused
        metrics = json.loads((stage.output / "metrics.json").read_text())
        records = read_jsonl(stage.output / "generations.jsonl")
    return metrics, records, reused


def _measure_premises(settings, ctx, stages, runtime, policy) -> dict | None:
    """framework/premises.py on what the method recorded in `ctx.artifacts`, with the gold answers (the
    method never sees them); a stage keyed by the trained model, so every decoder's job shares it. Every
    process takes part in its greedy pass (sharded, as the evaluation's); the main process writes the stage.
    Returns the premises on the main process, None on the others."""
    from framework import premises
    from framework.generation import Request, ShardedEngine, engine_identity, open_engine

    if not settings.evaluation.premises or not ctx.artifacts:
        return None
    spec = {"policy": policy.fingerprint, "data": ctx.data.fingerprint, "engine": engine_identity(settings.engine)}
    max_new_tokens = getattr(settings.algorithm, "max_new_tokens", settings.decoder.max_new_tokens)

    with stages.open("premises", spec, code=("framework.premises", __name__), shared=True, collective=True,
                     processes_in_key=False) as stage:
        if not stage.done:
            passes = []  # one shard directory per greedy pass, in the same order on every process

            def greedy(model, prompts: list[str]) -> list[str]:
                directory = stage.checkpoints / "generation" / f"pass-{len(passes):03d}"
                passes.append(directory)
                with open_engine(model, settings.engine, runtime, settings.seed) as engine:
                    outputs = ShardedEngine(engine, directory, settings.engine.rows_per_shard).generate(
                        prompts, Request(max_new_tokens=max_new_tokens, stop=ctx.data.stop), seed=settings.seed)
                return [candidates[0].text for candidates in outputs]

            # every process measures (the greedy pass needs them all; checking the answers is cheap), one writes
            values = premises.measure(ctx.artifacts, ctx.control_data or ctx.data, ctx.data.checker, greedy)
            if distributed.is_main_process():
                (stage.new_output_dir() / "premises.json").write_text(json.dumps(values, sort_keys=True))
            stage.commit({})
        if not distributed.is_main_process():
            return None
        return json.loads((stage.output / "premises.json").read_text())


def _training_budgets(stages, entries: list[dict]) -> list[dict]:
    """The budget record (steps, examples, epochs, losses) of every training stage among `entries`, in order."""
    budgets = []
    for entry in entries:
        budget = stages.record(entry).get("budget")
        if budget is not None:  # a training stage (stages cached before budgets were recorded have none)
            budgets.append({"kind": entry["kind"], **budget})
    return budgets


def _evaluate_control(settings, control, start, data, decoder, stages, runtime, output_dir: Path,
                      job: JobResult) -> ControlSummary:
    """Evaluate a method's control with the job's decoder; its own record and generations go into
    <job dir>/control/ (the report reads it as the row `<method> control`). Returns a summary for the
    method's results.json."""
    metrics, records, reused = _evaluate(settings, control, data, decoder, stages, runtime)
    directory = output_dir / "control"
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "generations.jsonl", records)
    # what the control rests on: the stages up to the model it started from (noted before anything that
    # depends on it), then its own; not the method's data stages
    ledger = stages.compute_ledger()
    keys = [entry["key"] for entry in ledger]
    upstream_end = keys.index(start.fingerprint["key"]) + 1 if start.fingerprint.get("key") in keys else 0
    upstream = [*ledger[:upstream_end], ledger[keys.index(control.fingerprint["key"])]]
    # the control's own record: the job's, with the control's model, evaluation and compute
    replace(job, control_of=settings.algorithm.name, metrics=metrics, policy=control.fingerprint,
            evaluation_reused=reused, compute=stages.compute_spent(upstream),
            training=_training_budgets(stages, upstream) or None).write(directory / "results.json")
    return ControlSummary(policy=control.fingerprint, metrics=metrics, dir=str(directory))


def _during_training(settings, data):
    """evaluation.during_training's evaluator on the labelled validation split (every method's trainer gets its
    callback, framework/algorithms/validation.py), or None when it is off."""
    if not settings.evaluation.during_training.enabled:
        return None
    from framework.algorithms.validation import ValidationEvaluator

    if data.validation is None:
        raise ConfigError(f"evaluation.during_training: dataset={settings.dataset.name} made no validation split; "
                          "set dataset.validation_size=<N>")
    return ValidationEvaluator(settings.evaluation.during_training, data.validation, data.checker,
                               settings.decoder.max_new_tokens, data.stop, settings.engine, data.fingerprint)


def _validation_split(data):
    """`data` with its validation split in the place of the test split (keyed apart from the test split's)."""
    if data.validation is None:
        raise ConfigError("evaluation.objective=validation: the dataset made no validation split; set "
                          "dataset.validation_size=<N>")
    return replace(data, test=data.validation, dropped_empty_gold=0,
                   fingerprint={**data.fingerprint, "split": "validation"})


def _best_on_validation(ctx, policy) -> dict | None:
    """The best-on-validation record (with its `model`) of the training stage that made `policy`, or None."""
    for entry in reversed(ctx.trained):
        if entry.get("key") == policy.fingerprint.get("key") and entry.get("best_on_validation"):
            return dict(entry["best_on_validation"])
    return None


def check(cfg: DictConfig):
    """The composed config, validated (a RunConfig): what every job checks first and a sweep checks for each of
    its jobs before the first runs (framework/sweeper.py). ConfigError, naming the key, on any bad value."""
    # idempotent; needed where a launcher (submitit) starts the job from a pickle and main() never ran
    registry.load_plugins()
    settings = to_validated(cfg)
    evaluation_targets(cfg, settings)  # each evaluation dataset's decoder, checked against the engine
    unknown = sorted(set(settings.evaluation.control_decoders) - set(registry.decoders.names()))
    if unknown:  # here, not in the schema: the decoder registry imports framework.config
        raise ConfigError(f"evaluation.control_decoders: {', '.join(unknown)} is no decoder; "
                          f"available: {', '.join(registry.decoders.names())}")
    return settings


def _load_evaluation_datasets(settings, targets) -> list[tuple]:
    """(target, its TaskData, its decoder) for each dataset of evaluation.datasets (`targets`), loaded before any
    work: ConfigError, naming the entry, on a bad file or row."""
    loaded = []
    for target in targets:
        try:
            data = registry.datasets.get(target.dataset.name)(target.dataset)
        except ConfigError as error:  # the loaders name their keys `dataset.<key>`: say which entry
            raise ConfigError(f"{target.key}: {error}") from None
        decoder = registry.decoders.get(target.decoder.name)(target.decoder, seed=settings.seed,
                                                             answer_extractor=data.checker.extract, stop=data.stop)
        loaded.append((target, data, decoder))
    return loaded


def _evaluate_on_each(settings, policy, loaded, stages, runtime) -> list[tuple]:
    """The model scored on each dataset of evaluation.datasets: `_evaluate` with that dataset and the decoder as
    it runs there, so the stage is keyed by the model, that dataset and that decoder and shared with every job
    that scores the same model on it. [(target, metrics, records, reused)], in the order of `loaded`."""
    return [(target, *_evaluate(replace(settings, dataset=target.dataset, decoder=target.decoder), policy, data,
                                decoder, stages, runtime))
            for target, data, decoder in loaded]


def _record_evaluations(evaluated, output_dir: Path, tracker) -> dict[str, EvaluationSummary]:
    """Each evaluation dataset's generations into <job dir>/evaluations/<name>/, its metrics to W&B under
    `eval/<name>/`; returns results.json's `evaluations`."""
    summaries = {}
    for target, metrics, records, reused in evaluated:
        directory = output_dir / "evaluations" / target.name
        directory.mkdir(parents=True, exist_ok=True)
        write_jsonl(directory / "generations.jsonl", records)
        summaries[target.name] = EvaluationSummary(dataset=target.dataset.name, metrics=metrics,
                                                   decoder_config=vars(target.decoder), evaluation_reused=reused)
        tracker.log(metrics, prefix=f"eval/{target.name}/")
        tracker.summary({f"eval/{target.name}/{key}": value for key, value in metrics.items()})
        tracker.log_table(f"eval/{target.name}/generations", records)
    return summaries


def run(cfg: DictConfig, output_dir: Path, group: str | None = None, overrides: list[str] | None = None) -> dict:
    """One job. Returns its JobResult as a dict (also written to `output_dir/results.json`)."""
    from transformers import set_seed

    from framework import evaluation
    from framework.algorithms import AlgorithmContext
    from framework.algorithms.starting import starting_context, train_control
    from framework.models import resolve_runtime
    from framework.stages import StageStore

    started = time.time()
    settings = check(cfg)  # ConfigError on any bad value, before anything is built
    distributed.check_device(settings.device)  # ConfigError: cuda:N would put every process on one GPU
    require_writable_directory(settings.stages.cache_dir, "stages.cache_dir")  # before any work, not at its first write
    require_writable_directory(output_dir, "hydra.sweep.dir" if group else "hydra.run.dir")
    runtime = resolve_runtime(settings.device, settings.model.precision)
    distributed.setup(cpu=runtime.device == "cpu")  # joins accelerate's/torchrun's process group; alone: nothing
    output_dir = distributed.share_from_main(output_dir)  # processes may have resolved different timestamps
    algorithm = registry.algorithms.get(settings.algorithm.name)
    data = registry.datasets.get(settings.dataset.name)(settings.dataset)  # ConfigError on a bad file or row
    _check_training_data(settings, algorithm, data)
    targets = evaluation_targets(cfg, settings)
    if settings.dataset.name in settings.evaluation.datasets:
        log.warning("evaluation.datasets.%s is the training dataset: scored once, with dataset's keys",
                    settings.dataset.name)
    more = _load_evaluation_datasets(settings, targets[1:])  # evaluation.datasets, each loaded before any work
    plan.refuse_if_too_big(settings, data)  # on a GPU: a stage whose memory cannot fit fails now, with the ways out
    decoder = registry.decoders.get(settings.decoder.name)(settings.decoder, seed=settings.seed,
                                                           answer_extractor=data.checker.extract, stop=data.stop)
    build_model = registry.models.get(settings.model.name)
    stages = StageStore(settings.stages.cache_dir, reuse=settings.stages.reuse)
    base = build_model(settings.model, stages, runtime)  # ConfigError if it cannot load; tiny: built once
    tokenizer = base.load_tokenizer()
    data = data.render_prompts(tokenizer)  # prompt_format=chat needs the model's chat template
    more = [(target, more_data.render_prompts(tokenizer), decoder) for target, more_data, decoder in more]

    resolved = OmegaConf.to_container(cfg, resolve=True)
    if distributed.is_main_process():  # the run's files and W&B run are the main process's (distributed.py)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    run_name = settings.run_name or f"{settings.algorithm.name}-{settings.decoder.label()}-seed{settings.seed}"
    # `method` / `decoder_label` survive W&B sweep agents, which overwrite `algorithm` with the swept option name
    tracked = {**resolved, "method": settings.algorithm.name, "decoder_label": settings.decoder.label()}
    tracker = tracking.start(settings.logger, tracked, output_dir, run_name, group, job_type=settings.algorithm.name)
    failed, main_evaluates, results = True, False, None
    try:
        set_seed(settings.seed)
        context = AlgorithmContext(config=settings.algorithm, base=base, data=data, stages=stages, runtime=runtime,
                                   seed=settings.seed, report_to=tracker.report_to, output_dir=output_dir,
                                   log=tracker.log, model_config=settings.model, engine=settings.engine,
                                   during_training=_during_training(settings, data))
        trained_at = time.time()
        method_context = starting_context(context, algorithm)
        policy = algorithm(method_context)
        model_stages = stages.compute_ledger()  # every stage the model rests on (the control's come after)
        control = None  # the method's control (evaluation.control_decoders), evaluated beside it
        if settings.decoder.name in settings.evaluation.control_decoders:
            control = train_control(method_context)
            if control is not None and control[0].fingerprint == policy.fingerprint:
                control = None  # SFT's own control is SFT: nothing to set beside it
        control_stages = [entry for entry in stages.compute_ledger() if entry not in model_stages]
        train_seconds = time.time() - trained_at
        if not distributed.is_main_process():  # decode its shards of each generating step below; the main one
            _evaluate(settings, policy, data, decoder, stages, runtime)  # scores and records (in this order)
            _measure_premises(settings, method_context, stages, runtime, policy)
            if control is not None:
                _evaluate(settings, control[0], data, decoder, stages, runtime)
            _evaluate_on_each(settings, policy, more, stages, runtime)
            if settings.evaluation.objective == "validation":
                _evaluate(settings, policy, _validation_split(data), decoder, stages, runtime)
            results, failed = distributed.wait_for_main("scoring the test split"), False
            return results
        main_evaluates = True
        # from the stages' records, so a job that reused its model shows the same curves as one that trained it
        tracking.log_training_curves(tracker, stages, model_stages)
        tracking.log_training_curves(tracker, stages, control_stages, name="control")

        metrics, records, evaluation_reused = _evaluate(settings, policy, data, decoder, stages, runtime)
        premises = _measure_premises(settings, method_context, stages, runtime, policy)
        # the model's compute: not its control's training, which the control's own record counts
        compute = stages.compute_spent([entry for entry in stages.compute_ledger() if entry not in control_stages])
        training = _training_budgets(stages, model_stages)
        write_jsonl(output_dir / "generations.jsonl", records)
        result = JobResult(
            algorithm=settings.algorithm.name, decoder=settings.decoder.name, decoder_label=settings.decoder.label(),
            dataset=settings.dataset.name, model=settings.model.name, seed=settings.seed, metrics=metrics,
            algorithm_config=resolved["algorithm"], decoder_config=vars(settings.decoder),
            train_seconds=train_seconds, wall_seconds=time.time() - started, compute=compute,
            evaluation_reused=evaluation_reused, policy=policy.fingerprint, overrides=overrides or [],
            versions=_versions(), hardware=_hardware(runtime), wandb_run=tracker.run_path, training=training or None)
        if premises:
            result.premises = premises
            tracker.summary({f"premises/{key}": value for key, value in premises.items()})
        if control is not None:
            result.control = _evaluate_control(settings, *control, data, decoder, stages, runtime, output_dir, result)
            tracker.summary({f"control_eval/{key}": value for key, value in result.control.metrics.items()})
        evaluated = _evaluate_on_each(settings, policy, more, stages, runtime)
        if evaluated:
            result.evaluations = _record_evaluations(evaluated, output_dir, tracker)
        if settings.evaluation.objective == "validation":  # what a search maximises instead of test accuracy
            validation_metrics, _, _ = _evaluate(settings, policy, _validation_split(data), decoder, stages, runtime)
            result.validation, result.objective = {"metrics": validation_metrics}, "validation"
            tracker.summary({f"validation_eval/{key}": value for key, value in validation_metrics.items()})
        if (best := _best_on_validation(method_context, policy)) is not None:
            model = best.pop("model")
            best_metrics, _, _ = _evaluate(settings, model, data, decoder, stages, runtime)
            result.best_on_validation = {**best, "policy": model.fingerprint, "metrics": best_metrics}
            tracker.summary({"best_on_validation/step": best["step"],
                             **{f"best_on_validation/{key}": value for key, value in best_metrics.items()}})
        result.write(output_dir / "results.json")
        results = result.to_dict()
        tracker.log(metrics, prefix="eval/")
        tracker.summary({f"eval/{key}": value for key, value in metrics.items()})
        tracker.summary({f"compute/{key}": value for key, value in compute.items() if key != "stages"})
        tracker.log_table("eval/generations", records)
        failed = False
    finally:
        tracker.finish(failed=failed)
        memory.release_if_worked()  # the next job of a sweep (same process) starts with this one's memory back
        if main_evaluates:  # release the processes waiting above (no-op for a single process)
            distributed.release_waiting(results, failed, "scoring the test split")
    print(f"{run_name} on {settings.dataset.name}: accuracy {metrics['accuracy']:.3f} "
          f"[{metrics['accuracy_ci_low']:.3f}, {metrics['accuracy_ci_high']:.3f}] "
          f"(n={metrics['num_problems']}), mean {metrics['mean_tokens']:.1f} tokens -> {output_dir}", flush=True)
    for name, summary in (results.get("evaluations") or {}).items():
        scores = summary["metrics"]
        print(f"{run_name} on {name}: accuracy {scores['accuracy']:.3f} [{scores['accuracy_ci_low']:.3f}, "
              f"{scores['accuracy_ci_high']:.3f}] (n={scores['num_problems']}), mean {scores['mean_tokens']:.1f} "
              "tokens", flush=True)
    if results and (best := results.get("best_on_validation")):
        print(f"  best on validation: step {best['step']} of {best['last_step']} (validation accuracy "
              f"{best['validation_accuracy']:.3f}, last {best['last_validation_accuracy']:.3f}): test accuracy "
              f"{best['metrics']['accuracy']:.3f}", flush=True)
    return results
