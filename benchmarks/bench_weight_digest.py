"""What fingerprinting a checkpoint's weights by content costs (agci.fingerprints.model_fingerprint): a 7B-sized
checkpoint (``--gb`` of random safetensors shards, default 15) is written to a scratch folder, its
fingerprint taken cold (page cache dropped when run as root, digest cache empty), then again with the digest
cache warm; the folder is deleted afterwards.

    python benchmarks/bench_weight_digest.py --gb 15 --dir /tmp/agci-digest-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def write_shards(folder: Path, gb: float, shard_gb: float = 2.5) -> int:
    """Random bytes in safetensors files of one uint8 tensor each (real headers, ``shard_gb`` per file)."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    rng = np.random.default_rng(0)
    left, i, total = int(gb * 2**30), 0, 0
    while left > 0:
        n = min(left, int(shard_gb * 2**30))
        tensor = rng.integers(0, 256, size=n, dtype=np.uint8)
        save_file({"weight": tensor}, str(folder / f"model-{i:05d}.safetensors"))
        total += n
        left -= n
        i += 1
        del tensor
    return total


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=15.0)
    parser.add_argument("--dir", default=None, help="scratch folder (deleted afterwards)")
    args = parser.parse_args()
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="agci-digest-bench-"))
    cache = scratch / "cache"
    os.environ["AGCI_CACHE_DIR"] = str(cache)
    from agci.fingerprints import model_fingerprint

    try:
        t = time.perf_counter()
        size = write_shards(scratch / "ckpt", args.gb)
        written = time.perf_counter() - t
        dropped = drop_page_cache()
        t = time.perf_counter()
        cold = model_fingerprint(scratch / "ckpt")
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = model_fingerprint(scratch / "ckpt")
        warm_s = time.perf_counter() - t
        assert cold == warm
        print(json.dumps({"bytes": size, "gib": round(size / 2**30, 2), "write_s": round(written, 1),
                          "page_cache_dropped": dropped, "cold_s": round(cold_s, 2),
                          "cold_gib_per_s": round(size / 2**30 / cold_s, 2), "cached_s": round(warm_s, 4),
                          "cpus": os.cpu_count()}, indent=1))  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
