"""The launcher: `python -m framework [overrides]` or `python -m framework -m [sweep overrides]`.

    compose (Hydra) -> validate -> build data, decoder, model -> run the algorithm plugin
                    -> decode the test split -> score -> write results -> log to W&B

Everything that can be wrong with the input is checked before the first training step. The
launcher knows no algorithm, dataset, decoder or model by name: it looks each up in the registry.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import sys
import time
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

# Before any Hugging Face import: no telemetry pings (TRL sends one per trainer) on offline machines.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from framework import __version__, distributed, registry, tracking  # noqa: E402
from framework.config import GROUP_BASES, to_validated, unknown_key_message  # noqa: E402
from framework.errors import ConfigError  # noqa: E402
from framework.jsonl import read_jsonl, write_jsonl  # noqa: E402
from framework.paths import CONF_DIR  # noqa: E402
from framework.results import ControlSummary, JobResult  # noqa: E402

log = logging.getLogger("framework")


def _versions() -> dict:
    import datasets
    import torch
    import transformers
    import trl

    return {"framework": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "datasets": datasets.__version__}


def _hardware(runtime) -> dict:
    import torch

    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "processes": distributed.world_size(),
            "device": runtime.device, "precision": runtime.precision}
    if runtime.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(runtime.device)
    return info


def _hydra_context() -> tuple[Path, str | None, list[str]]:
    """This job's output directory, the sweep's name when in a multirun, and the job's overrides."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    group = Path(hydra_config.sweep.dir).name if hydra_config.mode == RunMode.MULTIRUN else None
    return output_dir, group, list(hydra_config.overrides.task)


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
    Returns (metrics, records, reused)."""
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
    code = ("framework.__main__", "framework.evaluation", type(decoder).__module__, type(data.checker).__module__)
    with distributed.main_process_alone(), stages.open("evaluation", spec, code=code, shared=True) as stage:
        reused = stage.done
        if not reused:
            decoded_at = time.time()
            with open_engine(policy, settings.engine, runtime, settings.seed) as engine:
                # shards in the stage's checkpoints: an interrupted evaluation resumes where it stopped
                decoding = decoder.decode(ShardedEngine(engine, stage.checkpoints / "generation"), list(test["prompt"]))
                model = engine.transformers_model  # the same loaded model scores the gold (None: vLLM)
            tokenizer = policy.load_tokenizer()
            metrics, records = evaluation.score(test, decoding, data.checker, decoder)  # with the decoder's own
            metrics["decode_seconds"] = time.time() - decoded_at
            if settings.evaluation.diagnostics and "completion" in test.column_names:  # needs demonstrations
                model = model if model is not None else policy.load_model(runtime)  # vllm: once its engine is closed
                gold_logprobs = teacher_forced_logprobs(model, tokenizer, list(test["prompt"]),
                                                        list(test["completion"]),
                                                        settings.evaluation.sequences_per_forward)
                metrics.update(evaluation.optimism_diagnostics(records, gold_logprobs))
            del model
            metrics["generated_tokens"] = sum(record["num_tokens"] for record in records)
            output = stage.new_output_dir()
            write_jsonl(output / "generations.jsonl", records)
            (output / "metrics.json").write_text(json.dumps(metrics, sort_keys=True, default=str))
            stage.commit({"compute": {"generated_tokens": metrics["generated_tokens"]}})
        metrics = json.loads((stage.output / "metrics.json").read_text())
        records = read_jsonl(stage.output / "generations.jsonl")
    return metrics, records, reused


def _measure_premises(settings, ctx, stages, runtime, policy) -> dict | None:
    """framework/premises.py on what the method recorded in `ctx.artifacts`, with the gold answers (the
    method never sees them); a stage keyed by the trained model, so every decoder's job shares it."""
    from framework import premises
    from framework.generation import Request, engine_identity, open_engine

    if not settings.evaluation.premises or not ctx.artifacts:
        return None
    spec = {"policy": policy.fingerprint, "data": ctx.data.fingerprint, "engine": engine_identity(settings.engine)}
    max_new_tokens = getattr(settings.algorithm, "max_new_tokens", settings.decoder.max_new_tokens)

    def greedy(model, prompts: list[str]) -> list[str]:
        with open_engine(model, settings.engine, runtime, settings.seed) as engine:
            outputs = engine.generate(prompts, Request(max_new_tokens=max_new_tokens), seed=settings.seed,
                                      prompts_per_batch=settings.decoder.prompts_per_batch)
        return [candidates[0].text for candidates in outputs]

    with distributed.main_process_alone(), stages.open("premises", spec, code=("framework.premises", __name__),
                                                       shared=True) as stage:
        if not stage.done:
            values = premises.measure(ctx.artifacts, ctx.control_data or ctx.data, ctx.data.checker, greedy)
            (stage.new_output_dir() / "premises.json").write_text(json.dumps(values, sort_keys=True))
            stage.commit({})
        return json.loads((stage.output / "premises.json").read_text())


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
            evaluation_reused=reused, compute=stages.compute_spent(upstream)).write(directory / "results.json")
    return ControlSummary(policy=control.fingerprint, metrics=metrics, dir=str(directory))


def run(cfg: DictConfig, output_dir: Path, group: str | None = None, overrides: list[str] | None = None) -> dict:
    """One job. Returns its JobResult as a dict (also written to `output_dir/results.json`)."""
    from transformers import set_seed

    from framework import evaluation
    from framework.algorithms import AlgorithmContext
    from framework.algorithms.starting import starting_context, train_control
    from framework.models import resolve_runtime
    from framework.stages import StageStore

    started = time.time()
    # idempotent; needed where a launcher (submitit) starts the job from a pickle and main() never ran
    registry.load_plugins()
    settings = to_validated(cfg)  # ConfigError on any bad value, before anything is built
    unknown = sorted(set(settings.evaluation.control_decoders) - set(registry.decoders.names()))
    if unknown:  # here, not in the schema: the decoder registry imports framework.config
        raise ConfigError(f"evaluation.control_decoders: {', '.join(unknown)} is no decoder; "
                          f"available: {', '.join(registry.decoders.names())}")
    distributed.check_device(settings.device)  # ConfigError: cuda:N would put every process on one GPU
    runtime = resolve_runtime(settings.device, settings.model.precision)
    distributed.setup(cpu=runtime.device == "cpu")  # joins accelerate's/torchrun's process group; alone: nothing
    output_dir = distributed.share_from_main(output_dir)  # processes may have resolved different timestamps
    algorithm = registry.algorithms.get(settings.algorithm.name)
    data = registry.datasets.get(settings.dataset.name)(settings.dataset)  # ConfigError on a bad file or row
    _check_training_data(settings, algorithm, data)
    decoder = registry.decoders.get(settings.decoder.name)(settings.decoder, seed=settings.seed,
                                                           answer_extractor=data.checker.extract)
    build_model = registry.models.get(settings.model.name)
    stages = StageStore(settings.stages.cache_dir, reuse=settings.stages.reuse)
    base = build_model(settings.model, stages, runtime)  # ConfigError if it cannot load; tiny: built once
    data = data.render_prompts(base.load_tokenizer())  # prompt_format=chat needs the model's chat template

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
                                   log=tracker.log, model_config=settings.model, engine=settings.engine)
        trained_at = time.time()
        method_context = starting_context(context, algorithm)
        policy = algorithm(method_context)
        control = None  # the method's control (evaluation.control_decoders), evaluated beside it
        if settings.decoder.name in settings.evaluation.control_decoders:
            control = train_control(method_context)
        train_seconds = time.time() - trained_at
        if not distributed.is_main_process():  # the main process decodes and scores alone; wait for its results
            results, failed = distributed.wait_for_main("decoding and scoring the test split"), False
            return results
        main_evaluates = True

        metrics, records, evaluation_reused = _evaluate(settings, policy, data, decoder, stages, runtime)
        premises = _measure_premises(settings, method_context, stages, runtime, policy)
        compute = stages.compute_spent()
        write_jsonl(output_dir / "generations.jsonl", records)
        result = JobResult(
            algorithm=settings.algorithm.name, decoder=settings.decoder.name, decoder_label=settings.decoder.label(),
            dataset=settings.dataset.name, model=settings.model.name, seed=settings.seed, metrics=metrics,
            algorithm_config=resolved["algorithm"], decoder_config=vars(settings.decoder),
            train_seconds=train_seconds, wall_seconds=time.time() - started, compute=compute,
            evaluation_reused=evaluation_reused, policy=policy.fingerprint, overrides=overrides or [],
            versions=_versions(), hardware=_hardware(runtime), wandb_run=tracker.run_path)
        if premises:
            result.premises = premises
            tracker.summary({f"premises/{key}": value for key, value in premises.items()})
        if control is not None:
            result.control = _evaluate_control(settings, *control, data, decoder, stages, runtime, output_dir, result)
            tracker.summary({f"control_eval/{key}": value for key, value in result.control.metrics.items()})
        result.write(output_dir / "results.json")
        results = result.to_dict()
        tracker.log(metrics, prefix="eval/")
        tracker.summary({f"eval/{key}": value for key, value in metrics.items()})
        tracker.summary({f"compute/{key}": value for key, value in compute.items() if key != "stages"})
        tracker.log_table("eval/generations", records)
        failed = False
    finally:
        tracker.finish(failed=failed)
        if main_evaluates:  # release the processes waiting above (no-op for a single process)
            distributed.release_waiting(results, failed, "decoding and scoring the test split")
    print(f"{run_name} on {settings.dataset.name}: accuracy {metrics['accuracy']:.3f} "
          f"[{metrics['accuracy_ci_low']:.3f}, {metrics['accuracy_ci_high']:.3f}] "
          f"(n={metrics['num_problems']}), mean {metrics['mean_tokens']:.1f} tokens -> {output_dir}", flush=True)
    return results


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_entry(cfg: DictConfig) -> float:
    output_dir, group, overrides = _hydra_context()
    try:
        return run(cfg, output_dir, group, overrides)["metrics"]["accuracy"]
    except ConfigError as error:
        if group is not None:  # in a sweep: fail this job only; Hydra runs the others and reports it
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def _refuse_emptied_groups(arguments: list[str]) -> None:
    """Every run needs one option per group. Hydra answers `decoder=null` or `~decoder` with a traceback
    (the defaults list interpolates the chosen options), so say it in one line instead."""
    for argument in arguments:
        key, _, value = argument.lstrip("~").partition("=")
        if key in (*GROUP_BASES, "experiment") and (argument.startswith("~") or value == "null"):
            hint = "experiment=none turns presets off" if key == "experiment" else "`python -m framework --help` lists them"
            print(f"error: {key} needs an option (got {argument!r}); {hint}", file=sys.stderr)
            sys.exit(2)


def _raised_in_job(error: BaseException) -> bool:
    """Whether `error` came out of a job's own code (a bug, to show with its traceback) rather than out of
    Hydra composing a config: the task function's frame is on its traceback."""
    task_code = inspect.unwrap(hydra_entry).__code__
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code is task_code:
            return True
        frame = frame.tb_next
    return False


def _one_line(text: str) -> str:
    """Hydra's message without its search-path listing, on one line."""
    return " ".join(line.strip() for line in text.split("Config search path:")[0].splitlines() if line.strip())


def composition_error_line(error: Exception) -> str:
    """One line for what Hydra refuses while composing: an unknown option, an unknown key, a wrong type,
    an override it cannot parse."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        available = [name for name in error.options if not name.endswith("_schema")]  # building blocks, not options
        return f"{group}={option}: no such option; available: {', '.join(available)}"
    if isinstance(error, OverrideParseException):
        return f"{error.override}: cannot parse this override ({_one_line(error.message)})"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        schema = getattr(cause, "object_type", None)
        if schema is dict and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):  # a free-form node
            return (f"{cause.full_key}: new keys of this free-form node are added with `+`: "
                    f"+{cause.full_key}=<value>")
        known = {item.name for item in fields(schema)} if is_dataclass(schema) else None
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and known is not None and cause.key not in known:
            parent = getattr(cause, "parent_node", None)
            root = parent._get_root() if parent is not None else None  # holds the chosen options' names
            return unknown_key_message(root, cause.full_key, schema)
        return f"{cause.full_key}: {str(cause.msg).splitlines()[0]}"  # later lines repeat the key and type
    return _one_line(f"{error} {cause or ''}")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main() -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _refuse_emptied_groups(sys.argv[1:])
    registry.load_plugins()  # registers every schema in the ConfigStore before Hydra composes
    traceback_wanted = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user asked for Hydra's full traces
    # Hydra prints its own errors over several lines unless this is set; then it re-raises, and we print one
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_entry()
    except ConfigError as error:  # a sweep job's bad value, raised once the sweep's other jobs have run
        if traceback_wanted:
            raise
        _fail(str(error))
    except (HydraException, OmegaConfBaseException) as error:
        if traceback_wanted or _raised_in_job(error):  # a job's own failure is a bug: keep its traceback
            raise
        _fail(composition_error_line(error))


if __name__ == "__main__":
    sys.exit(main())
