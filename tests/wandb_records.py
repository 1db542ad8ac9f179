"""Read back what W&B wrote for an offline run: its `run-<id>.wandb` file is a LevelDB-style log
(header ":W&B", then 32 KiB blocks of crc/length/type-framed chunks) of protobuf `Record`s."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK, HEADER = 32768, 7


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # too little room left in the block: padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            break
        if pos + HEADER + length > len(data):  # a chunk still being written
            break
        pending += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):  # FULL or LAST chunk: a record is complete
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def finished_records(run_file: Path, timeout_s: float = 60.0) -> list:
    """The run's records once W&B has written its closing `exit` record. W&B's service writes the file
    on its own schedule: right after `finish()` returns, a loaded machine may not have it on disk yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        recs = records(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in recs):
            return recs
        if time.monotonic() > deadline:
            kinds = [r.WhichOneof("record_type") for r in recs]
            raise AssertionError(f"{run_file} has no exit record after {timeout_s:.0f} s: {kinds}")
        time.sleep(0.2)


def read_run(run_file: Path) -> dict:
    """{'id', 'history': [{key: value}], 'summary': {key: value}, 'config': {key: value}, 'rewound_to': the
    step a rewound run's history was cut after, else None}."""
    out = {"id": None, "history": [], "summary": {}, "config": {}, "rewound_to": None}
    for rec in finished_records(run_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["id"] = rec.run.run_id
            if rec.run.HasField("branch_point"):  # wandb.init(resume_from=...): history cut after this step
                out["rewound_to"] = int(rec.run.branch_point.value)
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.summary.update}
            )
    return out
