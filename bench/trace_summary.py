#!/usr/bin/env python3
"""Summarizes a Kineto trace written by `distill_step --profile`: GPU busy
time against wall time, kernel time inside each `distill.*` scope, kernel
time by kind and the heaviest kernels.

    python3 bench/trace_summary.py TRACE.json [--top 25]
"""
import argparse
import collections
import json
import re

KINDS = [
    ("attention", r"flash|fmha|attention|sdpa"),
    ("gemm", r"gemm|cutlass|xmma|nvjet|cublas|sm90_|sm80_"),
    ("convolution", r"conv|implicit|cudnn|winograd|fprop|dgrad|wgrad"),
    ("lpd fused", r"lpd::engine"),
    ("group norm (aten)", r"group_norm|GroupNorm"),
    ("layer norm (aten)", r"layer_norm|LayerNorm"),
    ("optimizer", r"adam|Adam"),
    ("multi-tensor", r"multi_tensor_apply"),
    ("reduction", r"reduce_kernel|Reduce"),
    ("copy / layout", r"copy|Copy|cat|Cat|transpose|nchwToNhwc|nhwcToNchw"),
    ("elementwise", r"elementwise|vectorized|Elementwise"),
]


def kind_of(name):
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other"


def union_length(intervals):
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    events = json.load(open(args.trace))["traceEvents"]
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    scopes = [e for e in events if e.get("cat") == "gpu_user_annotation"
              and e.get("name", "").startswith("distill.")]
    if not kernels:
        print("no kernels in the trace")
        return
    start = min(k["ts"] for k in kernels)
    stop = max(k["ts"] + k["dur"] for k in kernels)
    busy = union_length([(k["ts"], k["ts"] + k["dur"]) for k in kernels])
    print(f"GPU span {(stop - start) / 1e3:.1f} ms, busy {busy / 1e3:.1f} ms "
          f"({100 * busy / (stop - start):.0f}%), {len(kernels)} kernels")
    by_scope = collections.OrderedDict()
    for s in sorted(scopes, key=lambda e: e["ts"]):
        inside = [(k["ts"], k["ts"] + k["dur"]) for k in kernels
                  if k["ts"] >= s["ts"] and k["ts"] < s["ts"] + s["dur"]]
        span, work = by_scope.get(s["name"], (0.0, 0.0))
        by_scope[s["name"]] = (span + s["dur"], work + union_length(inside))
    if by_scope:
        print("scope (summed over the profiled steps): span ms, kernel ms")
        for name, (span, work) in by_scope.items():
            print(f"  {name:28s} {span / 1e3:8.1f} {work / 1e3:8.1f}")
    by_kind = collections.Counter()
    by_name = collections.Counter()
    count = collections.Counter()
    for k in kernels:
        by_kind[kind_of(k["name"])] += k["dur"]
        by_name[k["name"]] += k["dur"]
        count[k["name"]] += 1
    print("kernel time by kind, ms")
    for kind, dur in by_kind.most_common():
        print(f"  {kind:22s} {dur / 1e3:8.1f}")
    print(f"heaviest {args.top} kernels: ms, launches, name")
    for name, dur in by_name.most_common(args.top):
        print(f"  {dur / 1e3:8.2f} {count[name]:6d}  {name[:110]}")


if __name__ == "__main__":
    main()
