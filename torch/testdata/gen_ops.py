#!/usr/bin/python3
"""Golden data for the binding's op tests (torch/ops_test.go, autograd_test.go).

Run with Debian's python3-torch 1.13 (the libtorch the Go shim links):

    /usr/bin/python3 torch/testdata/gen_ops.py

It writes torch/testdata/ops.safetensors. The header's __metadata__ holds
"cases": a JSON list of {name, op, args, inputs, outputs, exact}; input and
output tensors are stored under the names listed. The Go test replays each
case through the binding and compares (exactly when "exact", else at 1e-6).
No safetensors package is needed: the file is written with json + struct.
"""
import json
import math
import os
import struct

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
torch.manual_seed(20251127)

tensors = {}
cases = []
stored = {}  # id of an input tensor already stored → its name (inputs are shared between cases)

DT = {
    torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def case(name, op, inputs, outputs, exact=False, **args):
    assert name not in {c["name"] for c in cases}, name
    in_names, out_names = [], []
    for i, t in enumerate(inputs):
        if t is None:
            in_names.append("")
            continue
        if id(t) in stored:
            in_names.append(stored[id(t)][0])
            continue
        n = f"{name}/in{i}"
        tensors[n] = t.detach().contiguous()
        stored[id(t)] = (n, t)  # keep t alive so its id is not reused
        in_names.append(n)
    if isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    for i, t in enumerate(outputs):
        n = f"{name}/out{i}"
        tensors[n] = t.detach().contiguous()
        out_names.append(n)
    # JSON has no Infinity: non-finite floats are written as strings ("inf", "-inf").
    args = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in args.items()}
    cases.append({"name": name, "op": op, "args": args, "inputs": in_names, "outputs": out_names, "exact": exact})


def rn(*shape):
    return torch.randn(*shape)


# --- interpolate -----------------------------------------------------------
img = rn(2, 3, 8, 6)
for size in ([13, 11], [5, 4], [8, 6]):
    tag = "x".join(map(str, size))
    case(f"interp_nearest_{tag}", "interpolate", [img], F.interpolate(img, size=size, mode="nearest"),
         exact=True, size=size, mode="nearest", align_corners=False, antialias=False)
    case(f"interp_nearest_exact_{tag}", "interpolate", [img], F.interpolate(img, size=size, mode="nearest-exact"),
         exact=True, size=size, mode="nearest-exact", align_corners=False, antialias=False)
    for mode in ("bilinear", "bicubic"):
        for ac in (False, True):
            case(f"interp_{mode}_ac{int(ac)}_{tag}", "interpolate", [img],
                 F.interpolate(img, size=size, mode=mode, align_corners=ac),
                 size=size, mode=mode, align_corners=ac, antialias=False)
# antialias when down-scaling (both align_corners settings)
for size in ([5, 4], [3, 2], [4, 6]):
    tag = "x".join(map(str, size))
    for mode in ("bilinear", "bicubic"):
        for ac in (False, True):
            case(f"interp_{mode}_aa_ac{int(ac)}_{tag}", "interpolate", [img],
                 F.interpolate(img, size=size, mode=mode, align_corners=ac, antialias=True),
                 size=size, mode=mode, align_corners=ac, antialias=True)

# --- pad -----------------------------------------------------------------------
x4 = rn(2, 3, 5, 6)
x3 = rn(2, 3, 7)
x5 = rn(1, 2, 3, 4, 5)
for mode in ("constant", "reflect", "replicate"):
    for p in ([1, 2, 3, 0], [2, 2, 2, 2], [0, 3, 1, 1]):
        case(f"pad_{mode}_4d_{'_'.join(map(str, p))}", "pad", [x4], F.pad(x4, p, mode=mode, value=0.0 if mode != "constant" else 1.5),
             exact=True, pad=p, mode=mode, value=1.5 if mode == "constant" else 0.0)
    case(f"pad_{mode}_3d", "pad", [x3], F.pad(x3, [2, 3], mode=mode, value=-2.0 if mode == "constant" else 0.0),
         exact=True, pad=[2, 3], mode=mode, value=-2.0 if mode == "constant" else 0.0)
    case(f"pad_{mode}_5d", "pad", [x5], F.pad(x5, [1, 2, 2, 1, 1, 0], mode=mode),
         exact=True, pad=[1, 2, 2, 1, 1, 0], mode=mode, value=0.0)
case("pad_constant_negative", "pad", [x4], F.pad(x4, [-1, 2, 0, -2]), exact=True, pad=[-1, 2, 0, -2], mode="constant", value=0.0)


# --- scaled dot-product attention (reference: the math formula in float64) ------
def sdpa_ref(q, k, v, mask=None, causal=False, scale=None):
    q, k, v = q.double(), k.double(), v.double()
    s = scale if scale else 1.0 / math.sqrt(q.shape[-1])
    scores = q @ k.transpose(-2, -1) * s
    L, S = q.shape[-2], k.shape[-2]
    if causal:
        scores = scores.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.double()
    return (torch.softmax(scores, -1) @ v).float()


q, k, v = rn(2, 3, 5, 8), rn(2, 3, 7, 8), rn(2, 3, 7, 4)
bmask = torch.rand(2, 1, 5, 7) > 0.3
bmask[..., 0] = True  # no fully masked row
fmask = rn(1, 3, 5, 7)
case("sdpa_plain", "sdpa", [q, k, v, None], sdpa_ref(q, k, v), causal=False, scale=0.0)
case("sdpa_bool_mask", "sdpa", [q, k, v, bmask], sdpa_ref(q, k, v, bmask), causal=False, scale=0.0)
case("sdpa_float_mask", "sdpa", [q, k, v, fmask], sdpa_ref(q, k, v, fmask), causal=False, scale=0.0)
case("sdpa_scale", "sdpa", [q, k, v, None], sdpa_ref(q, k, v, scale=0.3), causal=False, scale=0.3)
qc, kc, vc = rn(2, 2, 6, 8), rn(2, 2, 6, 8), rn(2, 2, 6, 8)
case("sdpa_causal", "sdpa", [qc, kc, vc, None], sdpa_ref(qc, kc, vc, causal=True), causal=True, scale=0.0)
cmask = torch.rand(1, 1, 6, 6) > 0.5
cmask[..., 0] = True
case("sdpa_causal_bool_mask", "sdpa", [qc, kc, vc, cmask], sdpa_ref(qc, kc, vc, cmask, causal=True), causal=True, scale=0.0)

# --- activations ------------------------------------------------------------------
a = rn(4, 33) * 3
case("gelu", "gelu", [a], F.gelu(a))
case("gelu_tanh", "gelu_tanh", [a], F.gelu(a, approximate="tanh"))
case("silu", "silu", [a], F.silu(a))
case("relu", "relu", [a], F.relu(a), exact=True)
case("sigmoid", "sigmoid", [a], torch.sigmoid(a))
case("tanh", "tanh", [a], torch.tanh(a))
case("logsigmoid", "logsigmoid", [a], F.logsigmoid(a))
big = torch.tensor([[-200.0, -50.0, 0.0, 50.0, 200.0]])
case("logsigmoid_extreme", "logsigmoid", [big], F.logsigmoid(big))
for d in (0, 1, -1):
    case(f"softmax_d{d}", "softmax", [a], torch.softmax(a, d), dim=d)
    case(f"log_softmax_d{d}", "log_softmax", [a], torch.log_softmax(a, d), dim=d)
case("softmax_extreme", "softmax", [big], torch.softmax(big, -1), dim=-1)

# --- reductions ---------------------------------------------------------------------
r = rn(3, 4, 5)
for unb in (True, False):
    case(f"var_all_u{int(unb)}", "var", [r], torch.var(r, unbiased=unb), dims=None, unbiased=unb, keepdim=False)
    case(f"std_all_u{int(unb)}", "std", [r], torch.std(r, unbiased=unb), dims=None, unbiased=unb, keepdim=False)
    for dims, kd in (([1], False), ([0, 2], True), ([-1], False)):
        tag = "_".join(map(str, dims))
        case(f"var_{tag}_u{int(unb)}_k{int(kd)}", "var", [r], torch.var(r, dims, unbiased=unb, keepdim=kd),
             dims=dims, unbiased=unb, keepdim=kd)
        case(f"std_{tag}_u{int(unb)}_k{int(kd)}", "std", [r], torch.std(r, dims, unbiased=unb, keepdim=kd),
             dims=dims, unbiased=unb, keepdim=kd)
for p in (1.0, 2.0, 3.0, float("inf")):
    case(f"norm_p{p}", "norm", [r], torch.norm(r, p), p=p, dims=None, keepdim=False)
    case(f"norm_p{p}_d1", "norm", [r], torch.norm(r, p, dim=[1], keepdim=True), p=p, dims=[1], keepdim=True)
case("cumsum_d0", "cumsum", [r], torch.cumsum(r, 0), dim=0)
case("cumsum_d2", "cumsum", [r], torch.cumsum(r, -1), dim=-1)
case("cumsum_int", "cumsum", [torch.arange(12).reshape(3, 4)], torch.cumsum(torch.arange(12).reshape(3, 4), 1), exact=True, dim=1)
tk = rn(4, 9)
for largest in (True, False):
    vals, idx = torch.topk(tk, 3, dim=1, largest=largest)
    case(f"topk_d1_l{int(largest)}", "topk", [tk], [vals, idx], exact=True, k=3, dim=1, largest=largest)
vals, idx = torch.topk(tk, 2, dim=0)
case("topk_d0", "topk", [tk], [vals, idx], exact=True, k=2, dim=0, largest=True)

# --- normalisation ------------------------------------------------------------------
gx = rn(2, 6, 5, 4) * 2 + 1
gw, gb = rn(6), rn(6)
case("group_norm", "group_norm", [gx, gw, gb], F.group_norm(gx, 3, gw, gb, 1e-5), groups=3, eps=1e-5)
case("group_norm_noaffine", "group_norm", [gx, None, None], F.group_norm(gx, 2, eps=1e-6), groups=2, eps=1e-6)
lx = rn(3, 7, 10) * 3 - 1
lw, lb = rn(10), rn(10)
case("layer_norm", "layer_norm", [lx, lw, lb], F.layer_norm(lx, [10], lw, lb, 1e-5), shape=[10], eps=1e-5)
case("layer_norm_2d", "layer_norm", [lx, None, None], F.layer_norm(lx, [7, 10], eps=1e-6), shape=[7, 10], eps=1e-6)

# --- convolutions ---------------------------------------------------------------------
cx = rn(2, 4, 9, 8)
for name, (stride, padding, dilation, groups) in {
    "s1p0": ((1, 1), (0, 0), (1, 1), 1),
    "s2p1": ((2, 2), (1, 1), (1, 1), 1),
    "s2x1p1x2": ((2, 1), (1, 2), (1, 1), 1),
    "dil2": ((1, 1), (2, 2), (2, 2), 1),
    "g2": ((1, 1), (1, 1), (1, 1), 2),
    "dw": ((1, 1), (1, 1), (1, 1), 4),
}.items():
    w = rn(8, 4 // groups, 3, 3)
    b = rn(8)
    case(f"conv2d_{name}", "conv2d", [cx, w, b], F.conv2d(cx, w, b, stride, padding, dilation, groups),
         stride=list(stride), padding=list(padding), dilation=list(dilation), groups=groups)
w = rn(8, 4, 1, 1)
case("conv2d_1x1_nobias", "conv2d", [cx, w, None], F.conv2d(cx, w), stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1)
tx = rn(2, 4, 5, 6)
for name, (stride, padding, outpad, groups, dilation) in {
    "s1": ((1, 1), (0, 0), (0, 0), 1, (1, 1)),
    "s2p1": ((2, 2), (1, 1), (1, 1), 1, (1, 1)),
    "s2g2": ((2, 2), (1, 1), (0, 0), 2, (1, 1)),
    "dil2": ((1, 1), (1, 1), (0, 0), 1, (2, 2)),
}.items():
    w = rn(4, 6 // groups, 3, 3)
    b = rn(6)
    case(f"conv_transpose2d_{name}", "conv_transpose2d", [tx, w, b],
         F.conv_transpose2d(tx, w, b, stride, padding, outpad, groups, dilation),
         stride=list(stride), padding=list(padding), output_padding=list(outpad), groups=groups, dilation=list(dilation))

# --- matrix products ------------------------------------------------------------------
M, b1, b2 = rn(3, 4, 5), rn(3, 4, 6), rn(3, 6, 5)
case("baddbmm", "baddbmm", [M, b1, b2], torch.baddbmm(M, b1, b2, beta=0.5, alpha=2.0), beta=0.5, alpha=2.0)
case("baddbmm_beta0", "baddbmm", [M, b1, b2], torch.baddbmm(M, b1, b2, beta=0.0, alpha=0.125), beta=0.0, alpha=0.125)
mm1, mm2 = rn(2, 1, 4, 5), rn(3, 5, 2)
case("matmul_broadcast", "matmul", [mm1, mm2], torch.matmul(mm1, mm2))
lin_x, lin_w, lin_b = rn(2, 3, 5), rn(4, 5), rn(4)
case("linear", "linear", [lin_x, lin_w, lin_b], F.linear(lin_x, lin_w, lin_b))

# --- shape and indexing -----------------------------------------------------------------
ps = rn(2, 8, 3, 5)
case("pixel_shuffle", "pixel_shuffle", [ps], F.pixel_shuffle(ps, 2), exact=True, r=2)
pu = rn(2, 3, 6, 4)
case("pixel_unshuffle", "pixel_unshuffle", [pu], F.pixel_unshuffle(pu, 2), exact=True, r=2)
g = rn(4, 6)
gi = torch.randint(0, 6, (4, 3))
case("gather_d1", "gather", [g, gi], torch.gather(g, 1, gi), exact=True, dim=1)
gi0 = torch.randint(0, 4, (2, 6))
case("gather_d0", "gather", [g, gi0], torch.gather(g, 0, gi0), exact=True, dim=0)
ii = torch.tensor([3, 0, 0, 2])
case("index_select_d0", "index_select", [g, ii], torch.index_select(g, 0, ii), exact=True, dim=0)
case("index_select_d1", "index_select", [g, ii], torch.index_select(g, 1, ii), exact=True, dim=1)
sx = rn(3, 10, 4)
case("slice_step2", "slice", [sx], sx[:, 1:8:2], exact=True, dim=1, start=1, end=8, step=2)
case("slice_step3_neg", "slice", [sx], sx[:, -7::3], exact=True, dim=1, start=-7, end=2**63 - 1, step=3)
case("slice_d0", "slice", [sx], sx[0:2], exact=True, dim=0, start=0, end=2, step=1)
case("slice_clamped", "slice", [sx], sx[..., 2:100], exact=True, dim=2, start=2, end=100, step=1)
case("chunk_3", "chunk", [sx], list(torch.chunk(sx, 3, 1)), exact=True, chunks=3, dim=1)
case("chunk_uneven", "chunk", [sx], list(torch.chunk(sx, 4, 1)), exact=True, chunks=4, dim=1)
case("split_4", "split", [sx], list(torch.split(sx, 4, 1)), exact=True, size=4, dim=1)
case("split_sizes", "split_with_sizes", [sx], list(torch.split(sx, [2, 5, 3], 1)), exact=True, sizes=[2, 5, 3], dim=1)
wc = rn(3, 4) > 0
wx, wy = rn(3, 4), rn(1, 4)
case("where", "where", [wc, wx, wy], torch.where(wc, wx, wy), exact=True)
case("masked_fill", "masked_fill", [wx, wc], wx.masked_fill(wc, -3.25), exact=True, value=-3.25)
case("masked_fill_inf", "masked_fill", [wx, wc], wx.masked_fill(wc, float("-inf")), exact=True, value=float("-inf"))
cl = rn(5, 5) * 3
case("clamp", "clamp", [cl], torch.clamp(cl, -1.0, 0.5), exact=True, min=-1.0, max=0.5)
case("clamp_min", "clamp_min", [cl], torch.clamp(cl, min=0.25), exact=True, min=0.25)
case("clamp_max", "clamp_max", [cl], torch.clamp(cl, max=0.25), exact=True, max=0.25)

# --- autograd: a small MLP --------------------------------------------------------------
mx = rn(4, 8).requires_grad_()
W1, B1 = (rn(16, 8) * 0.3).requires_grad_(), (rn(16) * 0.1).requires_grad_()
LW, LB = (1 + 0.1 * rn(16)).requires_grad_(), (0.1 * rn(16)).requires_grad_()
W2, B2 = (rn(3, 16) * 0.3).requires_grad_(), (rn(3) * 0.1).requires_grad_()
target = rn(4, 3)
h = F.gelu(F.linear(mx, W1, B1))
h = F.layer_norm(h, [16], LW, LB, 1e-5)
y = F.linear(h, W2, B2)
loss = F.mse_loss(y, target)
loss.backward()
params = [mx, W1, B1, LW, LB, W2, B2, target]
case("mlp_grad", "mlp_grad", params, [y, loss] + [p.grad for p in params[:-1]])
# backward with a gradient argument (non-scalar output), accumulating twice
for p in params[:-1]:
    p.grad = None
y = F.linear(torch.tanh(F.linear(mx, W1, B1)), W2, B2)
gout = rn(4, 3)
y.backward(gout)
used = [mx, W1, B1, W2, B2]
case("mlp_grad_arg", "mlp_grad_arg", used + [gout], [y] + [p.grad for p in used])

# --- write ------------------------------------------------------------------------------------
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ops.safetensors")
header = {"__metadata__": {"cases": json.dumps(cases, separators=(",", ":"), allow_nan=False), "torch": torch.__version__}}
blobs = []
off = 0
for name in sorted(tensors):
    t = tensors[name]
    b = t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()
    header[name] = {"dtype": DT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
hb = json.dumps(header, separators=(",", ":")).encode()
hb += b" " * ((8 - len(hb) % 8) % 8)
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(hb)))
    f.write(hb)
    for b in blobs:
        f.write(b)
print(f"{out}: {len(cases)} cases, {len(tensors)} tensors, {os.path.getsize(out)} bytes")
