"""NCCL's failures reach the user as the one-line ``DistributedError`` (no GPU needed: the CUDA and
process-group calls are stood in for). Without ``TORCH_NCCL_BLOCKING_WAIT`` a timed-out NCCL collective
is found by NCCL's watchdog thread, which ends the process with a C++ stack; with it, the waiting
thread raises ``DistBackendError``, which ``collective`` turns into one line naming the rank."""

import pytest
import torch
import torch.distributed as dist

from dvae.errors import DistributedError
from dvae.infer import distributed
from dvae.infer.distributed import DistEnv, collective, init_from_env


def test_an_nccl_process_group_is_joined_with_blocking_waits(monkeypatch):
    seen = {}

    def init_process_group(backend, timeout):
        seen.update(backend=backend, timeout=timeout.total_seconds(),
                    blocking=distributed.os.environ.get("TORCH_NCCL_BLOCKING_WAIT"))

    monkeypatch.delenv("TORCH_NCCL_BLOCKING_WAIT", raising=False)
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    env = init_from_env("cuda", timeout=7.0)
    assert env.backend == "nccl" and env.device == torch.device("cuda", 1) and env.rank == 1
    assert seen == {"backend": "nccl", "timeout": 7.0, "blocking": "1"}


def test_a_user_setting_of_blocking_wait_is_kept(monkeypatch):
    monkeypatch.setenv("TORCH_NCCL_BLOCKING_WAIT", "0")
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    init_from_env("cuda")
    assert distributed.os.environ["TORCH_NCCL_BLOCKING_WAIT"] == "0"


def test_a_timed_out_nccl_collective_becomes_one_line_naming_the_rank():
    env = DistEnv(rank=1, world_size=4, local_rank=1, device=torch.device("cuda", 1), backend="nccl", timeout=30.0)

    def timed_out(*args):  # what a blocking wait raises when the collective's time is up
        raise dist.DistBackendError(
            "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=12, OpType=ALLREDUCE, "
            "NumelIn=1, NumelOut=1, Timeout(ms)=30000) ran for 30004 milliseconds before timing out.\n"
            "Exception raised from checkTimeout at ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:632\n"
            "frame #0: c10::Error::Error(...)")

    with pytest.raises(DistributedError) as info:
        collective(env, "the loss all-reduce", timed_out, torch.zeros(1))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("rank 1 of 4: the loss all-reduce failed ([Rank 1] Watchdog caught collective")
    assert "30 s (--dist-timeout)" in message
