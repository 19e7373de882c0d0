#!/usr/bin/python3
"""The PyTorch peer of bench_llama.c: the SmolLM2-135M shape with random
weights, LoRA (r 8 on q_proj and v_proj) trained with AdamW on random
tokens, eager float32 or under torch.autocast("cpu", bfloat16); prints one
JSON line like bench_llama's (median step after a warmup). With full,
every weight is trained instead (no LoRA).

usage: torch_llama.py THREADS STEPS fp32|bf16 [B T [lora|full]]"""
import json, math, resource, sys, time

import torch

th, steps, prec = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
B, T = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (4, 128)
FULL = len(sys.argv) > 6 and sys.argv[6] == "full"
torch.set_num_threads(th)
torch.manual_seed(1)
L, C, NH, NKV, HD, F, V, R = 30, 576, 9, 3, 64, 1536, 49152, 8
nn = torch.nn


class Lin(nn.Module):
    def __init__(self, i, o, lora):
        super().__init__()
        self.w = nn.Parameter(torch.randn(o, i) * 0.02, requires_grad=FULL)
        self.a = nn.Parameter(torch.randn(R, i) / math.sqrt(i)) if lora and not FULL else None
        self.b = nn.Parameter(torch.zeros(o, R)) if lora and not FULL else None

    def forward(self, x):
        y = x @ self.w.T
        return y + 2.0 * (x @ self.a.T) @ self.b.T if self.a is not None else y


def rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))


def rot(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = nn.Parameter(torch.ones(C), requires_grad=FULL), nn.Parameter(torch.ones(C), requires_grad=FULL)
        self.q, self.k, self.v, self.o = Lin(C, NH * HD, 1), Lin(C, NKV * HD, 0), Lin(C, NKV * HD, 1), Lin(NH * HD, C, 0)
        self.g, self.u, self.d = Lin(C, F, 0), Lin(C, F, 0), Lin(F, C, 0)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        h = rms(x, self.n1)
        q = self.q(h).view(b, t, NH, HD).transpose(1, 2)
        k = self.k(h).view(b, t, NKV, HD).transpose(1, 2)
        v = self.v(h).view(b, t, NKV, HD).transpose(1, 2)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k, v = k.repeat_interleave(NH // NKV, 1), v.repeat_interleave(NH // NKV, 1)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(HD)  # torch 1.13 has no fused attention
        att = att.masked_fill(~mask[:t, :t], float("-inf")).softmax(-1)
        y = att @ v
        x = x + self.o(y.transpose(1, 2).reshape(b, t, NH * HD))
        h = rms(x, self.n2)
        return x + self.d(torch.nn.functional.silu(self.g(h)) * self.u(h))


emb = nn.Parameter(torch.randn(V, C) * 0.02, requires_grad=FULL)
norm = nn.Parameter(torch.ones(C), requires_grad=FULL)
blocks = nn.ModuleList(Block() for _ in range(L))
inv = 1.0 / (100000 ** (torch.arange(0, HD, 2).float() / HD))
fr = torch.arange(T).float()[:, None] * inv[None]
cos, sin = torch.cat((fr, fr), -1).cos(), torch.cat((fr, fr), -1).sin()
mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
params = [p for p in blocks.parameters() if p.requires_grad] + ([emb, norm] if FULL else [])
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0)
x = torch.randint(0, V, (B, T))
y = torch.randint(0, V, (B, T))


def step():
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
        h = emb[x]
        for blk in blocks:
            h = blk(h, cos, sin)
        loss = torch.nn.functional.cross_entropy((rms(h, norm) @ emb.T).float().view(-1, V), y.view(-1))
    loss.backward()
    opt.step()
    return float(loss)


dt = []
for i in range(steps + 1):
    t = time.perf_counter()
    loss = step()
    if i:
        dt.append(time.perf_counter() - t)
med = sorted(dt)[len(dt) // 2]
print(json.dumps({"impl": "torch-" + prec, "what": "full-train" if FULL else "lora-train", "B": B, "T": T, "threads": th,
                  "trainable": sum(p.numel() for p in params), "tokens_per_s": round(B * T / med, 1),
                  "step_s": round(med, 3), "loss": round(loss, 4), "torch": torch.__version__,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
