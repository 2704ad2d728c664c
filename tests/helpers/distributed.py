"""Run a function on N real processes joined in a gloo group (CPU)."""

import datetime
import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, fn, args):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_group(fn, world_size=2, *args):
    """fn(rank, world_size, *args) on every rank; a failure on any rank fails the call."""
    mp.start_processes(
        _entry, args=(world_size, free_port(), fn, args), nprocs=world_size, start_method="spawn", join=True
    )
