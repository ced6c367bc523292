"""Train here or under torchrun on this node: the one choice `plantlib train` (`--nproc`) and 02_train share.

The launcher makes the run directory (with config.json) itself and starts the processes on it with
`--resume`, so it always knows which directory the job writes, even with other runs starting beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from plantlib.children import owned_process_group
from plantlib.config import RunConfig
from plantlib.distributed import launched_by_torchrun, shutdown
from plantlib.errors import ConfigError, PlantlibError
from plantlib.runs import RunDir
from plantlib.training.trainer import CallbackLike, Trainer, TrainingResult, result_from_run_dir

TORCHRUN_GRACE_S = 15.0  # torchrun passes a stop signal on to its workers and waits for them


def torchrun_command(nproc: int, train_args: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m plantlib train ...` for one node."""
    if nproc < 1:
        raise ConfigError(f"nproc={nproc} is not allowed; use 1 or more processes")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "--max_restarts=0",
        "-m",
        "plantlib",
        "train",
        *train_args,
    ]


def relay(command: Sequence[str], env: dict[str, str]) -> int:
    """Run `command`, relaying its output line by line through this process's stdout; its exit status.

    Relaying (instead of inheriting the file descriptor) makes the output appear in a notebook cell and in
    papermill's executed notebook too. The command runs in its own process group, ended (torchrun's workers
    too) when this process is interrupted or stopped; on Ctrl-C torchrun gets SIGINT, as from a terminal.
    """
    with owned_process_group(
        command, grace_s=TORCHRUN_GRACE_S, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
        return process.wait()


def run_torchrun(run_dir: Path, nproc: int, train_args: Sequence[str] = ()) -> Path:
    """Train (or continue) the run directory `run_dir` with `nproc` processes, each running `plantlib train
    --resume RUN_DIR [train_args]`; `run_dir`, once the job succeeded."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # share the cores instead of every process taking all of them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    command = torchrun_command(nproc, ["--resume", str(run_dir), *train_args])
    print("launching: " + " ".join(command[1:]), flush=True)
    status = relay(command, env)
    if status != 0:
        raise PlantlibError(
            f"the distributed run failed (torchrun exit status {status}; the failing rank's error is above). "
            f"Finished epochs are kept in {run_dir}: continue with plantlib train --nproc {nproc} --resume {run_dir}"
        )
    return Path(run_dir)


def launches_torchrun(nproc: int) -> bool:
    """Whether training with `nproc` processes starts a torchrun job from here: more than one process was asked
    for and this process is not itself one of a job's processes."""
    if nproc < 1:
        raise ConfigError(f"nproc={nproc} is not allowed; use 1 or more processes")
    return nproc > 1 and not launched_by_torchrun()


def train_here_or_launched(
    config: RunConfig,
    nproc: int = 1,
    callbacks: Sequence[CallbackLike] = (),
    resume: str | Path | None = None,
    train_args: Sequence[str] = (),
) -> TrainingResult:
    """Train `config` (or continue the interrupted run directory `resume`, whose saved config `config` is);
    the run's result.

    With `nproc` > 1 outside torchrun, a new run directory (or `resume`) is trained by a torchrun job of `nproc`
    processes on this node, each running `plantlib train --resume RUN_DIR [train_args]` with that command's own
    callbacks (rank 0 tracks and prints); `callbacks` are not used. Otherwise a Trainer in this process trains
    it with `callbacks` (under torchrun, as this process's rank of the job).
    """
    if launches_torchrun(nproc):
        run_dir = Path(resume) if resume else RunDir.create(config).path
        return result_from_run_dir(run_torchrun(run_dir, nproc, train_args))
    trainer = Trainer.resume(Path(resume), callbacks) if resume else Trainer.build(config, callbacks=callbacks)
    try:
        return trainer.fit()
    finally:
        shutdown()
