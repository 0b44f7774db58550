#!/usr/bin/env python3
"""Compare the layout of an alternate fixture folder with the public one.

    python3 scripts/altfixtures/check_layout.py ALT_DIR PUBLIC_DIR

For every file of PUBLIC_DIR (recursively): the file must exist in ALT_DIR;
io safetensors files must hold the same tensor names with the same dtypes and
ranks (shapes may differ; numbered families such as step.N.*, hidden_states.N or
case names like flux_512x512_25 may have other numbers and counts, so names
are compared with every run of digits replaced by "N"); weight files are skipped (their keys follow the
config); JSON files other than report.json / crosscheck.json must have the same
keys at every level (values and list lengths may differ). Prints each difference; exit status 1
when there is one. Pure Python (reads the safetensors header only).
"""
import json
import os
import re
import struct
import sys


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def family(h):
    out = {}
    for k, v in h.items():
        out.setdefault(re.sub(r"\d+", "N", k), v)
    return out


def keys(v, path=""):
    out = set()
    if isinstance(v, dict):
        for k, x in v.items():
            k = "N" if k.isdigit() else k  # keys that are values (step counts)
            out.add(path + "/" + k)
            out |= keys(x, path + "/" + k)
    elif isinstance(v, list) and v and isinstance(v[0], dict):
        for x in v:
            out |= keys(x, path + "[]")
    return out


def main():
    alt, pub = sys.argv[1], sys.argv[2]
    bad = 0
    for root, _, files in os.walk(pub):
        for fn in files:
            p = os.path.join(root, fn)
            rel = os.path.relpath(p, pub)
            q = os.path.join(alt, rel)
            if not os.path.exists(q):
                print(f"missing: {rel}")
                bad += 1
                continue
            if fn.endswith(".safetensors"):
                if fn in ("model.safetensors", "diffusion_pytorch_model.safetensors"):
                    continue
                a, b = family(header(q)), family(header(p))
                for k in sorted(set(a) | set(b)):
                    if k not in a:
                        print(f"{rel}: tensor {k} missing")
                    elif k not in b:
                        print(f"{rel}: extra tensor {k}")
                    elif a[k]["dtype"] != b[k]["dtype"] or len(a[k]["shape"]) != len(b[k]["shape"]):
                        print(f"{rel}: {k} is {a[k]['dtype']}{a[k]['shape']}, public {b[k]['dtype']}{b[k]['shape']}")
                    else:
                        continue
                    bad += 1
            elif fn.endswith(".json") and fn not in ("report.json", "crosscheck.json"):
                with open(q) as f:
                    a = keys(json.load(f))
                with open(p) as f:
                    b = keys(json.load(f))
                for k in sorted(b - a):
                    print(f"{rel}: key {k} missing")
                    bad += 1
                for k in sorted(a - b):
                    print(f"{rel}: extra key {k}")
                    bad += 1
    print("layout differences:", bad)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
