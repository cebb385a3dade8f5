"""Who does what when one job runs as several processes (`accelerate launch`, `torchrun`, SLURM tasks).

Every process runs the whole launcher. Training needs all of them (the trainer's DDP, DeepSpeed or
FSDP collectives), so a training stage runs on every process. Everything else runs on the main
process while the others wait for it: sampling and exploration stages, decoding and scoring the
test split, results.json, generations.jsonl, config.yaml and the W&B run. A plain
`python -m framework` is one process: no process group is created and every helper below reduces
to "this is the main process and nobody waits for it".

accelerate's `PartialState` joins the process group (backend, one GPU per process), the same state
the trainers then use. Waiting goes through a separate gloo group with a long timeout: the main
process may sample or evaluate for hours while the others wait, far longer than the 10-30 minutes
after which a collective on the training group would give up.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

from framework.errors import ConfigError

log = logging.getLogger(__name__)

# How long the other processes wait for the main process's sampling, exploration or evaluation. A
# main process that dies ends the job sooner: torchrun/accelerate/SLURM stop the others when one fails.
WAIT_TIMEOUT = timedelta(hours=72)
# transformers' default `ddp_timeout`, so the training group behaves as if the trainer had created it
COLLECTIVE_TIMEOUT = timedelta(seconds=1800)

_wait_group = None
_local = threading.local()  # depth of main-process-only sections (per thread, so tests can simulate ranks)


class MainProcessFailed(RuntimeError):
    """The main process failed, or left unfinished, a step the other processes were waiting for."""


@dataclass(frozen=True)
class _Failed:
    what: str


def launched_world_size() -> int:
    """Processes the launcher started: WORLD_SIZE as torchrun and accelerate set it; 1 for plain python."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _export_submitit_environment() -> None:
    """A SLURM (or submitit local) job with several tasks per job: give each task the RANK, WORLD_SIZE,
    LOCAL_RANK and MASTER_* variables torchrun would have set, from SLURM's own (submitit's helper)."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or "RANK" in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        # every task sees every GPU of its node; PartialState picks cuda:LOCAL_RANK
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def check_device(device: str) -> None:
    """Refuse a device string that would put every process on one GPU."""
    _export_submitit_environment()
    if launched_world_size() > 1 and device.startswith("cuda:"):
        raise ConfigError(f"device: {device!r} pins all {launched_world_size()} processes to one GPU; use device=auto "
                          "or device=cuda, which gives each process its own GPU (LOCAL_RANK)")


def setup(cpu: bool | None = None) -> None:
    """Join the launcher's process group when there is one; nothing for a single process. Idempotent.

    `cpu`: gloo instead of NCCL (default: when torch sees no GPU)."""
    global _wait_group
    _export_submitit_environment()
    if launched_world_size() <= 1 or _wait_group is not None:
        return
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    if cpu is None:
        cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu, timeout=COLLECTIVE_TIMEOUT)  # also sets this process's GPU from LOCAL_RANK
    _wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    log.info("process %d of %d (%s, %s)", state.process_index, state.num_processes, state.distributed_type,
             state.device)


def _group_ready() -> bool:
    if "torch.distributed" not in sys.modules:  # no group can exist; spares a torch import in light callers
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    if _group_ready():
        import torch.distributed as dist

        return dist.get_world_size()
    return launched_world_size()


def rank() -> int:
    if _group_ready():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def synchronized() -> bool:
    """Whether the other processes take part in what this one does next: false for a single process,
    and on the main process inside a main-process-only section (the others are waiting outside it)."""
    return getattr(_local, "alone_depth", 0) == 0 and world_size() > 1


@contextmanager
def main_process_alone() -> Iterator[None]:
    """Mark a section the main process runs while the others wait: nothing inside may wait for them."""
    _local.alone_depth = getattr(_local, "alone_depth", 0) + 1
    try:
        yield
    finally:
        _local.alone_depth -= 1


def share_from_main(value: Any = None) -> Any:
    """A barrier that carries a message: wait until the main process gets here; every process returns
    the main process's `value` (picklable). Without other processes, returns `value` at once."""
    return _broadcast_from_main(value) if synchronized() else value


def barrier() -> None:
    """Wait until every process of the job gets here (nothing to wait for when alone)."""
    share_from_main(None)


def _broadcast_from_main(value: Any) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=_wait_group)  # gloo: CPU objects, WAIT_TIMEOUT
    return box[0]


def release_waiting(value: Any, failed: bool, what: str) -> None:
    """Main process: hand `value` to the processes blocked in `wait_for_main`, or tell them `what` failed."""
    if not (synchronized() and is_main_process()):
        return
    try:
        share_from_main(_Failed(what) if failed else value)
    except Exception as error:  # called from a `finally`: never hide the error that brought us here
        log.warning("could not release the waiting processes after %s: %s", what, error)


def wait_for_main(what: str) -> Any:
    """Other processes: wait for the main process's `release_waiting` and return its value."""
    value = share_from_main(None)
    if isinstance(value, _Failed):
        raise MainProcessFailed(f"{value.what} failed on the main process (rank 0); see its log")
    return value
