"""The eager CLIPTextModel of transformers 4.47 (attention without a padding mask, causal mask finfo.min,
argmax-of-ids pooling for the legacy eos_token_id 2) as a minimal re-implementation with HF key names, shared by
the alternate-fixture generators (transformers is not installed here)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class CLIPLayer(nn.Module):
    def __init__(self, c, act):
        super().__init__()
        D, I = c["hidden_size"], c["intermediate_size"]
        self.heads = c["num_attention_heads"]
        self.self_attn = nn.Module()
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            setattr(self.self_attn, n, nn.Linear(D, D))
        self.layer_norm1 = nn.LayerNorm(D, eps=c["layer_norm_eps"])
        self.layer_norm2 = nn.LayerNorm(D, eps=c["layer_norm_eps"])
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(D, I)
        self.mlp.fc2 = nn.Linear(I, D)
        self.act = act

    def forward(self, x, mask):
        B, L, D = x.shape
        hd = D // self.heads
        a = self.self_attn
        h = self.layer_norm1(x)
        q = a.q_proj(h) * hd ** -0.5
        k = a.k_proj(h)
        v = a.v_proj(h)
        sh = lambda t: t.view(B, L, self.heads, hd).transpose(1, 2)  # noqa: E731
        q, k, v = sh(q), sh(k), sh(v)
        w = torch.matmul(q, k.transpose(-1, -2)) + mask
        w = F.softmax(w, dim=-1)
        o = torch.matmul(w, v).transpose(1, 2).reshape(B, L, D)
        x = x + a.out_proj(o)
        return x + self.mlp.fc2(self.act(self.mlp.fc1(self.layer_norm2(x))))


class CLIPText(nn.Module):
    def __init__(self, c):
        super().__init__()
        act = {"gelu": lambda t: F.gelu(t), "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t)}[c["hidden_act"]]
        D = c["hidden_size"]
        self.text_model = nn.Module()
        tm = self.text_model
        tm.embeddings = nn.Module()
        tm.embeddings.token_embedding = nn.Embedding(c["vocab_size"], D)
        tm.embeddings.position_embedding = nn.Embedding(c["max_position_embeddings"], D)
        tm.encoder = nn.Module()
        tm.encoder.layers = nn.ModuleList([CLIPLayer(c, act) for _ in range(c["num_hidden_layers"])])
        tm.final_layer_norm = nn.LayerNorm(D, eps=c["layer_norm_eps"])

    def forward(self, ids):
        tm = self.text_model
        L = ids.shape[1]
        x = tm.embeddings.token_embedding(ids) + tm.embeddings.position_embedding(torch.arange(L).unsqueeze(0))
        mask = torch.full((L, L), torch.finfo(x.dtype).min, dtype=x.dtype).triu(1)[None, None]
        hs = [x]
        for layer in tm.encoder.layers:
            x = layer(x, mask)
            hs.append(x)
        last = tm.final_layer_norm(x)
        pooled = last[torch.arange(last.shape[0]), ids.argmax(dim=-1)]
        return last, pooled, hs
