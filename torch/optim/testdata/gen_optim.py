#!/usr/bin/python3
"""Golden optimizer trajectories for torch/optim (PyTorch 1.13, CPU).

    /usr/bin/python3 torch/optim/testdata/gen_optim.py

Writes optim.safetensors beside this script. A small least-squares problem
(pred = X @ w + b, loss = mse(pred, Y)) with a third parameter `frozen`
that never gets a gradient is optimised for 5 steps per configuration:

    zero_grad(set_to_none=True); loss.backward();
    [clip_grad_norm_(params, max_norm, norm_type)]; opt.step(); sched.step()

and the parameters, loss and learning rate of every step are stored under
"<config>/step<k>/<name>". The LR schedules are diffusers' (get_scheduler),
whose lambdas are copied below verbatim (diffusers is not installed here),
driven by torch's LambdaLR; their learning rates are stored under
"sched/<name>". __metadata__ holds the configurations as JSON ("configs",
"schedules").
"""
import json
import math
import os
import struct

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

torch.set_num_threads(1)
STEPS = 5


# --- diffusers.optimization (v0.2x), the lambdas of get_scheduler --------------------------
def constant(optimizer, **_):
    return LambdaLR(optimizer, lambda _: 1)


def constant_with_warmup(optimizer, num_warmup_steps, **_):
    def lr_lambda(current_step: int):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1.0, num_warmup_steps))
        return 1.0
    return LambdaLR(optimizer, lr_lambda)


def linear(optimizer, num_warmup_steps, num_training_steps, **_):
    def lr_lambda(current_step: int):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        return max(0.0, float(num_training_steps - current_step) / float(max(1, num_training_steps - num_warmup_steps)))
    return LambdaLR(optimizer, lr_lambda)


def cosine(optimizer, num_warmup_steps, num_training_steps, num_cycles=0.5, **_):
    def lr_lambda(current_step):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        progress = float(current_step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))
    return LambdaLR(optimizer, lr_lambda)


def cosine_with_restarts(optimizer, num_warmup_steps, num_training_steps, num_cycles=1, **_):
    def lr_lambda(current_step):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        progress = float(current_step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))
    return LambdaLR(optimizer, lr_lambda)


SCHEDULES = {"constant": constant, "constant_with_warmup": constant_with_warmup, "linear": linear,
             "cosine": cosine, "cosine_with_restarts": cosine_with_restarts}

tensors = {}

# --- the problem ------------------------------------------------------------------------------
g = torch.Generator().manual_seed(7)
X = torch.randn(8, 4, generator=g)
Y = torch.randn(8, 3, generator=g)
W0 = torch.randn(4, 3, generator=g) * 0.5
B0 = torch.randn(3, generator=g) * 0.1
F0 = torch.randn(2, generator=g)
tensors.update({"data/X": X, "data/Y": Y, "init/w": W0, "init/b": B0, "init/frozen": F0})

CONFIGS = [
    {"name": "adamw_default", "optimizer": "adamw", "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2},
    {"name": "adamw_clip_cosine", "optimizer": "adamw", "lr": 5e-2, "betas": [0.8, 0.99], "eps": 1e-6,
     "weight_decay": 0.1, "clip": 0.5, "norm_type": 2.0, "schedule": "cosine", "warmup": 2, "total": 5},
    {"name": "adamw_nowd_warmup", "optimizer": "adamw", "lr": 3e-2, "betas": [0.9, 0.95], "eps": 1e-8,
     "weight_decay": 0.0, "schedule": "constant_with_warmup", "warmup": 2, "total": 5},
    {"name": "sgd_plain", "optimizer": "sgd", "lr": 0.1},
    {"name": "sgd_momentum", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-3},
    {"name": "sgd_nesterov_clip_linear", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
     "weight_decay": 1e-2, "clip": 0.3, "norm_type": "inf", "schedule": "linear", "warmup": 1, "total": 5},
    {"name": "sgd_wd_clip1", "optimizer": "sgd", "lr": 0.2, "weight_decay": 0.05, "clip": 0.25, "norm_type": 1.0},
]


def run(cfg):
    w = W0.clone().requires_grad_()
    b = B0.clone().requires_grad_()
    frozen = F0.clone().requires_grad_()
    params = [w, b, frozen]
    if cfg["optimizer"] == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
                                weight_decay=cfg["weight_decay"], foreach=False)
    else:
        opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg.get("momentum", 0.0),
                              dampening=cfg.get("dampening", 0.0), weight_decay=cfg.get("weight_decay", 0.0),
                              nesterov=cfg.get("nesterov", False), foreach=False)
    sched = SCHEDULES[cfg.get("schedule", "constant")](opt, num_warmup_steps=cfg.get("warmup", 0),
                                                       num_training_steps=cfg.get("total", STEPS))
    for k in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(X @ w + b, Y)
        loss.backward()
        lr = opt.param_groups[0]["lr"]
        p = f"{cfg['name']}/step{k}"
        tensors[f"{p}/lr"] = torch.tensor(lr, dtype=torch.float64)
        tensors[f"{p}/loss"] = loss.detach().clone()
        if "clip" in cfg:
            nt = float(cfg["norm_type"])
            tensors[f"{p}/grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg["clip"], nt).detach().clone()
        opt.step()
        sched.step()
        tensors[f"{p}/w"] = w.detach().clone()
        tensors[f"{p}/b"] = b.detach().clone()
        assert frozen.grad is None and torch.equal(frozen, F0)
        st = opt.state[w]
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if key in st and st[key] is not None:
                tensors[f"{p}/state/w/{key}"] = st[key].detach().clone()


for cfg in CONFIGS:
    run(cfg)

# --- schedules alone ---------------------------------------------------------------------------
SCHED_CASES = []
for name in SCHEDULES:
    for warmup, total in ((0, 10), (3, 10), (4, 7)):
        dummy = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([dummy], lr=0.5)
        s = SCHEDULES[name](opt, num_warmup_steps=warmup, num_training_steps=total)
        lrs = []
        for _ in range(total + 3):  # past the end too
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
        key = f"sched/{name}_w{warmup}_t{total}"
        tensors[key] = torch.tensor(lrs, dtype=torch.float64)
        SCHED_CASES.append({"key": key, "name": name, "warmup": warmup, "total": total, "base_lr": 0.5})

# --- write -------------------------------------------------------------------------------------
DT = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "optim.safetensors")
header = {"__metadata__": {"configs": json.dumps(CONFIGS), "schedules": json.dumps(SCHED_CASES),
                           "steps": str(STEPS), "torch": torch.__version__}}
blobs, off = [], 0
for name in sorted(tensors):
    t = tensors[name].contiguous()
    b = t.numpy().tobytes()
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
print(f"{out}: {len(CONFIGS)} configs, {len(SCHED_CASES)} schedules, {os.path.getsize(out)} bytes")
