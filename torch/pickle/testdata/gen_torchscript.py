"""Writes torchscript.pt (a torch.jit.save archive shaped like OpenAI's CLIP releases: nested modules, a Sequential,
float16 and float32 parameters, buffers, a plain tensor attribute and an int attribute) and torchscript_state.pth
(torch.save of the same module's state_dict(), what torch.jit.load(...).state_dict() gives) for
TestLoadTorchScript. Run from this folder: /usr/bin/python3 gen_torchscript.py (torch 1.13)."""
import torch


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(4, 2)
        self.ln_1 = torch.nn.LayerNorm(4)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
        self.attn_mask = torch.full((3, 3), float('-inf')).triu(1)  # a plain attribute, not a buffer

    def forward(self, x):
        h = self.ln_1(x)
        return x + self.attn(h, h, h, need_weights=False, attn_mask=self.attn_mask)[0] + self.mlp(x)


class Visual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn1(self.conv1(x))


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = Visual()
        self.transformer = torch.nn.Sequential(Block(), Block())
        self.positional_embedding = torch.nn.Parameter(torch.randn(3, 4))
        self.logit_scale = torch.nn.Parameter(torch.ones([]) * 4.6052)
        self.input_resolution = 32

    def forward(self, image, text):
        return self.visual(image).mean() + self.transformer(text + self.positional_embedding).mean() * self.logit_scale


torch.manual_seed(0)
m = Model().eval()
m.visual.conv1.half().float()  # values representable in float16
m.transformer[0].mlp[0].weight.data = m.transformer[0].mlp[0].weight.data.half().float()
ts = torch.jit.trace(m, (torch.randn(1, 3, 8, 8), torch.randn(3, 1, 4)))
ts.visual.conv1.weight.data = ts.visual.conv1.weight.data.half()  # as CLIP releases store convolutions
torch.jit.save(ts, 'torchscript.pt')
torch.save(torch.jit.load('torchscript.pt').state_dict(), 'torchscript_state.pth')
