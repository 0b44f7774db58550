#!/usr/bin/env python3
"""Audit: find values of a fixture set written into Go test code.

    python3 scripts/fixture_literals.py [FIXTURES] [REPO]

FIXTURES defaults to ../shared/fixtures (beside the repository), REPO to the
repository. Tests must read every expectation from the fixture files (their
JSON, configs and tensor shapes), so that another set of the same layout
passes too. This script collects the values of a set that would betray a
copy — seeds, config channel lists, tensor shapes of three or more
dimensions, token-id runs — and greps every *_test.go file for them. It
prints each hit with its file and line; exit status 1 when there is one.
Seeds below 100, lists of fewer than three entries and shapes of fewer than
three dimensions are too common in unrelated test code to mean anything and
are not searched; a list or shape is searched as the Go literal it would become
("8, 12, 16, 16").
"""
import json
import os
import re
import struct
import sys

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else os.path.dirname(here)
fixtures = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(os.path.dirname(repo), "shared", "fixtures")

SEED_KEYS = {"seed", "seeds", "manual_seed", "noise_seed", "generator_seed"}
LIST_KEYS = {
    "block_out_channels", "conditioning_embedding_out_channels", "attention_head_dim", "axes_dims_rope",
    "num_attention_heads", "transformer_layers_per_block", "depths", "num_heads", "embed_dims",
}

seeds, lists = set(), set()


def walk_json(v, path=""):
    if isinstance(v, dict):
        for k, x in v.items():
            if k in SEED_KEYS:
                for s in (x if isinstance(x, list) else [x]):
                    if isinstance(s, int) and not isinstance(s, bool) and s >= 100:
                        seeds.add(s)
            if k in LIST_KEYS and isinstance(x, list) and len(x) >= 3 and all(isinstance(i, int) for i in x):
                lists.add(", ".join(map(str, x)))
            walk_json(x, path + "/" + k)
    elif isinstance(v, list):
        for x in v:
            walk_json(x, path)


shapes = set()
for root, _, files in os.walk(fixtures):
    for f in files:
        p = os.path.join(root, f)
        if f.endswith(".json"):
            try:
                with open(p) as fh:
                    walk_json(json.load(fh))
            except (ValueError, UnicodeDecodeError):
                pass
        elif f.endswith(".safetensors"):
            try:  # fixtures of bad input are not valid files
                with open(p, "rb") as fh:
                    n = struct.unpack("<Q", fh.read(8))[0]
                    if n > 50_000_000:
                        continue
                    hdr = json.loads(fh.read(n))
            except (ValueError, struct.error, UnicodeDecodeError):
                continue
            for k, info in hdr.items():
                if k != "__metadata__" and len(info.get("shape", [])) >= 3:
                    sh = info["shape"]
                    if max(sh) >= 4:
                        shapes.add(", ".join(map(str, sh)))

patterns = [("seed", re.compile(r"(?<![\w.])%d(?![\w.])" % s)) for s in sorted(seeds)]
patterns += [("config list", re.compile(r"[{\[]%s[}\]]" % re.escape(l))) for l in sorted(lists)]
patterns += [("tensor shape", re.compile(r"[{\[]%s[}\]]" % re.escape(s))) for s in sorted(shapes)]

hits = 0
for root, dirs, files in os.walk(repo):
    dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("testdata", "build")]
    for f in files:
        if not f.endswith("_test.go"):
            continue
        p = os.path.join(root, f)
        with open(p, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                code = line.split("//", 1)[0]
                for kind, pat in patterns:
                    if pat.search(code):
                        print("%s:%d: %s %s: %s" % (os.path.relpath(p, repo), i, kind, pat.pattern, line.strip()))
                        hits += 1
print("%d seeds, %d config lists, %d tensor shapes searched; %d hits" % (len(seeds), len(lists), len(shapes), hits),
      file=sys.stderr)
sys.exit(1 if hits else 0)
