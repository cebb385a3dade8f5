"""The report says which library versions and which machine its numbers come from (docs/reproducibility.md)."""
from framework.report.render import environment_lines
from framework.report.sweep import Run
from framework.results import JobResult

VERSIONS = {"framework": "0.1.0", "python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.25.0", "trl": "1.16.0"}
HARDWARE = {"cpu": "Example CPU @ 2.0GHz", "cpu_count": 2, "torch_threads": 2, "device": "cpu", "precision": "fp32"}


def _run(versions, hardware):
    return Run(JobResult(algorithm="sft", decoder="greedy", decoder_label="greedy", dataset="arith", model="tiny",
                         seed=0, metrics={"accuracy": 0.5}, versions=versions, hardware=hardware))


def test_one_environment_is_one_line_naming_the_versions_and_the_cpu():
    lines = environment_lines([_run(VERSIONS, HARDWARE), _run(VERSIONS, HARDWARE)])
    assert lines == ["Measured with framework 0.1.0, Python 3.11.7, torch 2.13.0+cpu, transformers 5.25.0, trl 1.16.0; "
                     "Example CPU @ 2.0GHz (2 CPUs, 2 torch threads, cpu, fp32)."]


def test_jobs_from_two_environments_are_listed_apart_with_their_counts():
    other = {**VERSIONS, "transformers": "5.19.0"}
    lines = environment_lines([_run(VERSIONS, HARDWARE), _run(other, HARDWARE), _run(other, HARDWARE)])
    assert lines[0].startswith("Measured in several environments")
    assert any(line.startswith("- 1 job(s):") and "transformers 5.25.0" in line for line in lines)
    assert any(line.startswith("- 2 job(s):") and "transformers 5.19.0" in line for line in lines)
