"""What a W&B offline run wrote, read back from its .wandb file without a server.

The file is W&B's record log: a 7-byte header, then records in 32 KiB blocks, each record
split into chunks of (crc32 u32, length u16, type u8) + bytes (types: 1 whole, 2 first,
3 middle, 4 last; a block's tail shorter than a chunk header is padding), and each whole
record one protobuf `Record`.
"""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
CHUNK = struct.Struct("<IHB")


def records(path: Path):
    data, at, parts = Path(path).read_bytes(), 7, b""
    while at + CHUNK.size <= len(data):
        left = BLOCK - at % BLOCK
        if left < CHUNK.size:
            at += left
            continue
        _, size, kind = CHUNK.unpack_from(data, at)
        if kind == 0:  # zeros to the block's end
            at += left
            continue
        at += CHUNK.size
        parts += data[at : at + size]
        at += size
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def offline_run(path: Path) -> dict:
    """The run's id, name, tags, group and config, and its history rows ({key: value} by _step)."""
    found = {"history": []}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            found |= {"id": run.run_id, "name": run.display_name, "tags": list(run.tags), "group": run.run_group}
        elif kind == "config":
            found["config"] = {
                item.key: json.loads(item.value_json) for item in record.config.update if item.key != "_wandb"
            }
        elif kind == "history":
            row = record.history.item  # "train/loss" is kept as the nested key (train, loss)
            found["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in row})
    return found
