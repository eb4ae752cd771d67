"""Mutation fuzzing of the checkpoint reader, run as a child process by tests/test_fuzz.py.

argv: seed, seconds, max_iterations, out.json. Every outcome must be a loaded object or a
CheckpointError that did not come from a failed allocation; anything else is recorded with the
input that caused it.

The memory bound: once torch is imported and the seed files are made, the address space is capped
at what the process then holds plus LOADER_HEADROOM, so whatever a mutant makes the loader allocate
beyond that fails here instead of taking the machine. The cap is set after the import because
torch's own size at import differs by build (a CUDA build cannot even import under a fixed 3 GiB cap);
the headroom is what is bounded, the same under every torch. The loader turns every exception into a
CheckpointError, so a refusal that began as a failed allocation is counted as a failure, not a
refusal: the file asked for memory it did not pay for.
"""

from __future__ import annotations

import io
import json
import random
import resource
import sys
import time
import zipfile

import numpy as np
import torch

from poster.checkpoint.formats import read_weight_file
from poster.errors import CheckpointError

# The mutants are a few kilobytes; loading one legitimately costs a few megabytes at most.
LOADER_HEADROOM = 512 << 20


def _address_space() -> int:
    """Bytes of address space this process holds now (what RLIMIT_AS counts)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def cap_address_space(headroom: int = LOADER_HEADROOM) -> None:
    limit = _address_space() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _from_failed_allocation(e: BaseException) -> bool:
    """Whether ``e`` or an exception it was raised from (``from None`` keeps ``__context__``) is an
    allocation the cap refused: Python's MemoryError or torch's allocator error."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, MemoryError) or "can't allocate memory" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def outcome(path: str) -> str:
    """'loaded', 'refused', or the failure (an unexpected exception or an allocation beyond the cap)."""
    try:
        read_weight_file(path)
        return "loaded"
    except CheckpointError as e:
        if _from_failed_allocation(e):
            return f"allocation beyond the cap: {str(e)[:300]}"
        return "refused"
    except BaseException as e:  # noqa: BLE001 - recording is the point
        return f"{type(e).__name__}: {str(e)[:300]}"


def _seeds() -> list[bytes]:
    """Real files of every kind the reader meets: zip and legacy, tensors, optimizer, numpy arrays."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    objects = [
        model.state_dict(),
        {"epoch": 3, "state_dict": model.state_dict(), "best_acc": torch.tensor(91.5), "optimizer": opt.state_dict(),
         "recorder": {"losses": np.arange(8, dtype=np.float32).reshape(4, 2), "best": np.float64(0.875)}},
        {"iter": 1, "model_state_dict": model.state_dict(), "optimizer_state_dict": {}},
    ]
    out = []
    for obj in objects:
        for legacy in (False, True):
            buf = io.BytesIO()
            torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
            out.append(buf.getvalue())
    return out


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        i = rng.randrange(len(b)) if b else 0
        if op < 0.5 and b:
            b[i] = rng.randrange(256)
        elif op < 0.7:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op < 0.85 and b:
            del b[i:i + rng.randint(1, 16)]
        else:  # a big number where a small one was: sizes, lengths, counts
            b[i:i + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff\xff\xff\xff"])
    return bytes(b)


def _mutate_pickle_only(data: bytes, rng: random.Random) -> bytes:
    """Keep the zip valid and mutate data.pkl, so the unpickler itself is reached."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            dst.writestr(info.filename, _mutate_bytes(body, rng) if info.filename.endswith("data.pkl") else body)
    return out.getvalue()


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def main() -> None:
    seed, seconds, limit, report = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)
    seeds = _seeds()
    for data in seeds:  # the loader's first-use costs (imports, caches) are paid before the cap
        read_weight_file(_write(report + ".seed.pth", data))
    cap_address_space()
    path = report + ".input.pth"
    counts = {"loaded": 0, "refused": 0}
    failures = []
    deadline = time.monotonic() + seconds
    n = 0
    while n < limit and time.monotonic() < deadline:
        base = rng.choice(seeds)
        data = _mutate_pickle_only(base, rng) if base[:2] == b"PK" and rng.random() < 0.6 else _mutate_bytes(base, rng)
        result = outcome(_write(path, data))
        if result in counts:
            counts[result] += 1
        else:
            failures.append({"error": result, "input": data.hex()})
            if len(failures) >= 5:
                break
        n += 1
    with open(report, "w") as f:
        json.dump({"iterations": n, **counts, "failures": failures}, f)


if __name__ == "__main__":
    main()
