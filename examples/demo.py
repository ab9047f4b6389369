"""The main job, end to end: save a small model compressed and checksummed,
open it lazily, verify it, read one tensor, and print its table.

Run with ``bash scripts/dev.sh demo`` (sets everything up first).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import torch

import deathtensors as dt


def main() -> None:
    torch.manual_seed(0)
    model = {
        "embed.weight": torch.randn(1000, 256).to(torch.bfloat16),
        "layer.0.weight": torch.randn(256, 256),
        "layer.0.bias": torch.zeros(256),
        "head.weight": torch.randn(10, 256).to(torch.float16),
        "step": torch.tensor(1234, dtype=torch.int64),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.deathtensors")
        dt.save(
            path,
            model,
            metadata={"layer.0.weight": {"init": "kaiming", "fan_in": 256}},
            global_metadata={"model": "demo-mlp", "license": "MIT"},
            compress=True,
            checksum=True,
        )
        raw = sum(t.numel() * t.element_size() for t in model.values())
        print(f"saved {len(model)} tensors, {raw} bytes of data -> {os.path.getsize(path)} bytes on disk")

        with dt.open(path, verify=True) as f:  # checks the SHA-256 footer first
            print("keys:", f.keys())
            print("metadata:", f.metadata())
            print("info:", f.info("layer.0.weight"))
            w = f.get_tensor("layer.0.weight")  # reads and decompresses only this tensor
            assert torch.equal(w, model["layer.0.weight"])
            print("layer.0.weight:", tuple(w.shape), w.dtype, "round-trips bit-exact")
            for name, t in f.get_tensors().items():
                assert torch.equal(t, model[name]), name
        print()
        subprocess.run([sys.executable, "-m", "deathtensors", "info", path], check=True)
        subprocess.run([sys.executable, "-m", "deathtensors", "verify", path], check=True)


if __name__ == "__main__":
    main()
