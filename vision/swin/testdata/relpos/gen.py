"""Reference for InterpolateRelativePositionTable: RAM's
interpolate_relative_pos_embed recipe (BEiT) with scipy's interp2d(kind='cubic'),
run on random tables. Needs numpy, scipy < 1.14 (interp2d), torch, safetensors.

    PYTHONPATH=<refenv> /usr/bin/python3 vision/swin/testdata/relpos/gen.py
"""
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file
from scipy import interpolate


def interpolate_table(rel_pos_bias, dst_num_pos):
    src_num_pos, num_attn_heads = rel_pos_bias.size()
    src_size = int(src_num_pos ** 0.5)
    dst_size = int(dst_num_pos ** 0.5)
    if src_size == dst_size:
        return rel_pos_bias

    def geometric_progression(a, r, n):
        return a * (1.0 - r ** n) / (1.0 - r)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        gp = geometric_progression(1, q, src_size // 2)
        if gp > dst_size // 2:
            right = q
        else:
            left = q
    dis = []
    cur = 1
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    r_ids = [-_ for _ in reversed(dis)]
    x = r_ids + [0] + dis
    y = r_ids + [0] + dis
    t = dst_size // 2.0
    dx = np.arange(-t, t + 0.1, 1.0)
    dy = np.arange(-t, t + 0.1, 1.0)
    out = []
    for i in range(num_attn_heads):
        z = rel_pos_bias[:, i].view(src_size, src_size).float().numpy()
        f = interpolate.interp2d(x, y, z, kind='cubic')
        out.append(torch.Tensor(f(dx, dy)).contiguous().view(-1, 1))
    return torch.cat(out, dim=-1)


here = os.path.dirname(os.path.abspath(__file__))
g = torch.Generator().manual_seed(7)
cases, tensors = [], {}
for name, win_src, win_dst, heads in [("w7_to_w12", 7, 12, 3), ("w12_to_w24", 12, 24, 2)]:
    src = torch.randn(((2 * win_src - 1) ** 2, heads), generator=g)
    dst = interpolate_table(src, (2 * win_dst - 1) ** 2)
    tensors[name + ".src"] = src.contiguous()
    tensors[name + ".dst"] = dst.contiguous()
    cases.append({"name": name, "dst_num_pos": (2 * win_dst - 1) ** 2})
save_file(tensors, os.path.join(here, "tables.safetensors"))
with open(os.path.join(here, "cases.json"), "w") as f:
    json.dump({"cases": cases, "tolerance": 1e-5}, f, indent=1)
