"""Data-parallel training under torchrun: which rank this process is, the few
collectives the training loop needs, and the launcher behind `solu train --nproc N`.

A process started without torchrun (no WORLD_SIZE in its environment) is rank 0 of 1,
and nothing here touches torch.distributed. Under torchrun the ranks join one process
group: gloo on the CPU, NCCL on CUDA (one GPU per rank, cuda:LOCAL_RANK), plus a small
gloo group for host-side agreement (the stop flag, the tokenizer), so those never wait
on the GPU.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from dataclasses import dataclass

import torch
import torch.distributed as dist

from solu.errors import UserError


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    host_group: object = None  # a gloo group; None when size == 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: cuda:LOCAL_RANK under torchrun on CUDA."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.size > 1 else device

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """In place: the element-wise sum over ranks."""
        if self.size > 1:
            dist.all_reduce(values)
        return values

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any rank."""
        if self.size == 1:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, group=self.host_group)
        return bool(value.item())

    def from_main(self, text: str | None) -> str:
        """Rank 0's `text`, on every rank."""
        if self.size == 1:
            return text
        box = [text]
        dist.broadcast_object_list(box, src=0, group=self.host_group)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier(group=self.host_group)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module a training step calls: DistributedDataParallel when size > 1; it
        averages the gradients over ranks during backward."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def leave(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def world_size() -> int:
    """How many ranks torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(device: torch.device) -> World:
    """This process's place in the run; under torchrun, joins the process group."""
    size = world_size()
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"rank {rank} needs cuda:{local_rank} but {torch.cuda.device_count()} GPU(s) are visible")
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        host_group = dist.new_group(backend="gloo")
    else:
        dist.init_process_group("gloo")
        host_group = dist.group.WORLD
    return World(rank, size, local_rank, host_group)


def _not_launcher(record: logging.LogRecord) -> bool:
    return not record.name.startswith(("torch.distributed.elastic", "torch.distributed.run",
                                       "torch.distributed.launcher"))


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m solu.cli ARGV` in `nproc` processes on this machine with torchrun's
    launcher, in this process; returns rank 0's exit code.

    Each rank prints its own errors (rank 0 only, see solu.cli), so torchrun's failure
    report is silenced. Ctrl-C or SIGTERM here reaches the ranks once, through the
    launcher: they stop after the current step and save a checkpoint."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if "OMP_NUM_THREADS" not in os.environ:  # share the cores, as torchrun's 1 would not
        os.environ["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // nproc))
    for handler in logging.getLogger("torch.distributed").handlers:  # torchrun's own lines and failure report
        handler.addFilter(_not_launcher)
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "solu.cli", *argv])
    before = set(descendants())
    try:
        run(args)
    except ChildFailedError as e:
        rank = 0 if 0 in e.failures else min(e.failures)
        return e.failures[rank].exitcode if e.failures[rank].exitcode > 0 else 1
    except SignalException:
        return 2  # the ranks stopped and said where (or had already finished)
    except OSError as e:  # a rank could not be started (a process cap, no memory)
        raise UserError(f"could not start {nproc} training processes: {e.strerror or e}") from None
    finally:  # a launch that failed part way leaves no rank behind, waiting for the others
        end_processes(set(descendants()) - before)
    return 0


def descendants() -> list[int]:
    """The process ids of this process's children, their children and so on (Linux /proc;
    elsewhere none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # it ended while we looked
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def end_processes(pids, grace_s: float = 5.0) -> None:
    """SIGTERM each of `pids`, then SIGKILL any still running after `grace_s`."""
    import signal
    import time

    def signal_all(sig) -> list[int]:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        return alive

    pids = signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = [pid for pid in pids if _running(pid)]
    signal_all(signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
