#!/usr/bin/env python3
"""Prints the largest absolute difference between same-named tensors of two
safetensors files (float tensors only). Needs only the standard library and
torch. Exit 1 if any difference exceeds --tol."""
import argparse
import json
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "F64": torch.float64, "I32": torch.int32}


def read(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:e]), dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"])
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("got")
    p.add_argument("expected")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--prefix", default="", help="only keys with this prefix")
    a = p.parse_args()
    got, exp = read(a.got), read(a.expected)
    worst = 0.0
    for k, v in sorted(exp.items()):
        if not k.startswith(a.prefix) or not v.is_floating_point() or k not in got:
            continue
        d = (got[k].double() - v.double()).abs().max().item()
        worst = max(worst, d)
        print(f"{k:30s} max|diff| {d:.3e}")
    print(f"worst {worst:.3e} (tol {a.tol})")
    sys.exit(0 if worst <= a.tol else 1)


if __name__ == "__main__":
    main()
