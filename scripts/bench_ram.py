#!/usr/bin/env python3
"""One image's RAM + DAPE tagging on the CPU: the official Python code against the Go port, side by side
on the same libtorch.

The Python side runs the official `ram/` package of cswry/DP2O-SR (RAMLora.generate_tag, as
test_sd2b_controlnet.py calls it) from a checkout given with --ram-repo (the folder holding `ram/`),
unmodified. transformers, timm, fairscale and loralib are not installed here: the small stand-ins
below provide the names the code imports (the same set the fixture generator used; loralib's layers
after the eval() merge are plain nn.Linear products, which is what they compute here). Weights are
random: the timing does not depend on them. The Go side is `go test ./tagger -bench Tag` (the fixture
weights, DAPE merged), run from this script with the same thread count.

    PYTHONPATH=<refenv> /usr/bin/python3 scripts/bench_ram.py --ram-repo /path/to/DP2O-SR [--threads 1] [--iters 3]
"""
import argparse
import dataclasses
import math
import os
import re
import subprocess
import sys
import time
import types


def stub_modules():
    import torch
    from torch import nn
    import torch.nn.functional as F

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        parent, _, child = name.rpartition(".")
        if parent:
            if parent not in sys.modules:
                module(parent)
            setattr(sys.modules[parent], child, m)
        return m

    # transformers (4.47 in the official env): only what the RAM code reads.
    class BertConfig:
        def __init__(self, **kw):
            self.chunk_size_feed_forward = 0
            self.output_attentions = False
            self.output_hidden_states = False
            self.use_return_dict = True
            self.return_dict = True
            self.is_decoder = False
            self.use_cache = True
            self.position_embedding_type = "absolute"
            self.pad_token_id = 0
            self.__dict__.update(kw)

        @classmethod
        def from_json_file(cls, path):
            import json
            with open(path) as f:
                return cls(**json.load(f))

    class PreTrainedModel(nn.Module):
        def __init__(self, config, *a, **k):
            super().__init__()
            self.config = config

        def init_weights(self):
            self.apply(self._init_weights)

        @property
        def dtype(self):
            return next(self.parameters()).dtype

        def get_head_mask(self, head_mask, n, *a):
            return [None] * n

        def invert_attention_mask(self, m):
            if m.dim() == 3:
                m = m[:, None, :, :]
            if m.dim() == 2:
                m = m[:, None, None, :]
            m = m.to(dtype=self.dtype)
            return (1.0 - m) * torch.finfo(self.dtype).min

        def resize_token_embeddings(self, n):
            return None

    def apply_chunking_to_forward(fn, chunk, dim, *inputs):
        return fn(*inputs)

    @dataclasses.dataclass
    class Output:
        last_hidden_state: object = None
        pooler_output: object = None
        past_key_values: object = None
        hidden_states: object = None
        attentions: object = None
        cross_attentions: object = None
        loss: object = None
        logits: object = None

        def __getitem__(self, i):
            return [v for v in dataclasses.astuple(self) if v is not None][i]

    class Tokenizer:
        def __init__(self):
            self.additional_special_tokens_ids = [30523]

        @classmethod
        def from_pretrained(cls, *a, **k):
            return cls()

        def add_special_tokens(self, d):
            return 0

        def __len__(self):
            return 30524

        def __call__(self, text, **k):
            return types.SimpleNamespace(input_ids=[101] + [1000] * len(text.split()) + [102])

    logging = types.SimpleNamespace(get_logger=lambda *_: types.SimpleNamespace(info=print, warning=print, warn=print))
    module("transformers", BertTokenizer=Tokenizer, BertConfig=BertConfig)
    module("transformers.activations", ACT2FN={"gelu": F.gelu, "relu": F.relu})
    module("transformers.file_utils", ModelOutput=Output)
    module("transformers.modeling_outputs", **{n: Output for n in [
        "BaseModelOutputWithPastAndCrossAttentions", "BaseModelOutputWithPoolingAndCrossAttentions",
        "CausalLMOutputWithCrossAttentions", "MaskedLMOutput", "MultipleChoiceModelOutput",
        "NextSentencePredictorOutput", "QuestionAnsweringModelOutput", "SequenceClassifierOutput",
        "TokenClassifierOutput"]})
    module("transformers.modeling_utils", PreTrainedModel=PreTrainedModel, apply_chunking_to_forward=apply_chunking_to_forward,
           find_pruneable_heads_and_indices=None, prune_linear_layer=None)
    module("transformers.utils", logging=logging)
    module("transformers.models.bert.configuration_bert", BertConfig=BertConfig)

    # timm (1.0.15): DropPath is the identity in eval, init helpers are overwritten by the weights.
    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    def trunc_normal_(t, std=1.0, **k):
        with torch.no_grad():
            return t.normal_(0, std)

    class DropPath(nn.Identity):
        def __init__(self, *a, **k):
            super().__init__()

    layers = dict(DropPath=DropPath, to_2tuple=to_2tuple, trunc_normal_=trunc_normal_)
    module("timm")
    module("timm.models.layers", **layers)
    module("timm.models.hub", download_cached_file=None)
    module("timm.models.vision_transformer", _cfg=None, PatchEmbed=None)
    module("timm.models.registry", register_model=lambda f: f)
    module("timm.models.helpers", named_apply=None, adapt_input_conv=None)
    module("fairscale.nn.checkpoint.checkpoint_activations", checkpoint_wrapper=lambda m, **k: m)

    # loralib 0.1.2 after .eval(): the LoRA update is merged into the weight and the layers compute
    # F.linear(x, W, b); the pairs are kept as parameters so that the state dict has DAPE's keys.
    class Linear(nn.Linear):
        def __init__(self, i, o, r=0, lora_alpha=1, **k):
            super().__init__(i, o, **{a: b for a, b in k.items() if a == "bias"})
            self.lora_A = nn.Parameter(torch.zeros(r, i))
            self.lora_B = nn.Parameter(torch.zeros(o, r))

    class MergedLinear(nn.Linear):
        def __init__(self, i, o, r=0, lora_alpha=1, enable_lora=(False,), **k):
            super().__init__(i, o, **{a: b for a, b in k.items() if a == "bias"})
            n = sum(enable_lora)
            self.lora_A = nn.Parameter(torch.zeros(r * n, i))
            self.lora_B = nn.Parameter(torch.zeros(o // len(enable_lora) * n, r))

    module("loralib", Linear=Linear, MergedLinear=MergedLinear)


def python_ms(repo, threads, iters):
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import transforms

    torch.set_num_threads(threads)
    stub_modules()
    sys.path.insert(0, repo)
    from ram.models.ram_lora import ram

    model = ram(pretrained="", pretrained_condition="", image_size=384, vit="swin_l").eval()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    tf = transforms.Compose([transforms.ToTensor()])
    norm = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

    def once():
        x = tf(img.convert("RGB")).unsqueeze(0)
        x = transforms.functional.resize(x, [384, 384], antialias=True)
        with torch.no_grad():
            return model.generate_tag(norm(x))

    once()  # warm-up
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        once()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return 1000 * wall / iters, 1000 * cpu / iters, torch.__version__


def go_ms(threads, iters):
    env = dict(os.environ, DP2O_BENCH_THREADS=str(threads))
    out = subprocess.run(["go", "test", "./tagger", "-run", "^$", "-bench", "^BenchmarkTag$", f"-benchtime={iters}x", "-count=1"],
                         capture_output=True, text=True, env=env, cwd=os.path.join(os.path.dirname(__file__), ".."))
    m = re.search(r"BenchmarkTag\S*\s+\d+\s+(\d+(?:\.\d+)?) ns/op\s+(\d+(?:\.\d+)?) cpu-ms/op", out.stdout)
    if not m:
        sys.exit("go benchmark failed:\n" + out.stdout + out.stderr)
    return float(m.group(1)) / 1e6, float(m.group(2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ram-repo", required=True, help="checkout of cswry/DP2O-SR (the folder holding ram/)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    py_wall, py_cpu, version = python_ms(a.ram_repo, a.threads, a.iters)
    go_wall, go_cpu = go_ms(a.threads, a.iters)
    print(f"RAM + DAPE tagging, one 512x512 image, CPU float32, {a.threads} thread(s), torch {version}, mean of {a.iters}")
    print(f"                                            wall ms/image   process CPU ms/image")
    print(f"  python (official ram_lora.generate_tag): {py_wall:12.1f}   {py_cpu:12.1f}")
    print(f"  go     (tagger.Tag):                      {go_wall:12.1f}   {go_cpu:12.1f}")
    print(f"  ratio go/python:                          {go_wall / py_wall:12.2f}   {go_cpu / py_cpu:12.2f}")


if __name__ == "__main__":
    main()
