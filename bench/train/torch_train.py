#!/usr/bin/python3
"""The same training step as bench_train.c in PyTorch (float32, eager, the
same architecture, initialisation scale, optimiser, clipping and batch), for
a side-by-side throughput and memory comparison; with bf16, the forward and
the loss under torch.autocast("cpu", dtype=torch.bfloat16).

usage: torch_train.py L H C T B THREADS STEPS full|lora [R [fp32|bf16]]
Prints one JSON line like bench_train: tokens/s (median step after the
first), peak RSS, and the RSS right after importing torch."""
import json, math, resource, sys, time

import torch

L, H, C, T, B, threads, steps = (int(a) for a in sys.argv[1:8])
lora = sys.argv[8] == "lora"
R = int(sys.argv[9]) if len(sys.argv) > 9 else 8
prec = sys.argv[10] if len(sys.argv) > 10 else "fp32"
V = 257
torch.set_num_threads(threads)
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
torch.manual_seed(1)


def p(*shape, std=0.02, grad=True):
    return torch.nn.Parameter(torch.randn(*shape) * std if std else torch.zeros(*shape), requires_grad=grad)


class Lin(torch.nn.Module):
    """GPT-2's Conv1D, y = x W + b with W [in, out], and LoRA y += s (x A^T) B^T."""

    def __init__(self, i, o, std):
        super().__init__()
        self.W, self.b = p(i, o, std=std, grad=not lora), p(o, std=0, grad=not lora)
        if lora:
            self.A = torch.nn.Parameter(torch.empty(R, i).uniform_(-1 / math.sqrt(i), 1 / math.sqrt(i)))
            self.B = torch.nn.Parameter(torch.zeros(o, R))

    def forward(self, x):
        y = torch.addmm(self.b, x.view(-1, x.shape[-1]), self.W).view(*x.shape[:-1], -1)
        if lora:
            y = y + 2.0 * ((x @ self.A.t()) @ self.B.t())
        return y


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        proj = 0.02 / math.sqrt(2 * L)
        self.ln1, self.ln2 = torch.nn.LayerNorm(C), torch.nn.LayerNorm(C)
        if lora:
            for ln in (self.ln1, self.ln2):
                ln.requires_grad_(False)
        self.attn, self.aproj = Lin(C, 3 * C, 0.02), Lin(C, C, proj)
        self.fc, self.mproj = Lin(C, 4 * C, 0.02), Lin(4 * C, C, proj)
        self.register_buffer("mask", torch.tril(torch.ones(T, T, dtype=torch.bool)))

    def forward(self, x):
        q, k, v = self.attn(self.ln1(x)).split(C, 2)
        q, k, v = (z.view(B, T, H, C // H).transpose(1, 2) for z in (q, k, v))
        a = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))
        a = a.masked_fill(~self.mask, float("-inf")).softmax(-1)
        x = x + self.aproj((a @ v).transpose(1, 2).reshape(B, T, C))
        return x + self.mproj(torch.nn.functional.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = p(V, C, grad=not lora), p(T, C, std=0.01, grad=not lora)
        self.h = torch.nn.ModuleList(Block() for _ in range(L))
        self.lnf = torch.nn.LayerNorm(C)
        if lora:
            self.lnf.requires_grad_(False)

    def forward(self, x, y):
        h = self.wte[x] + self.wpe[:T]
        for b in self.h:
            h = b(h)
        logits = self.lnf(h) @ self.wte.t()
        return torch.nn.functional.cross_entropy(logits.view(-1, V), y.view(-1))


m = GPT()
params = [q for q in m.parameters() if q.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
g = torch.Generator().manual_seed(12345)
x, y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
dt = []
for i in range(steps):
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
        loss = m(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    dt.append(time.perf_counter() - t)
med = sorted(dt[1:])[(steps - 1) // 2]
print(json.dumps({"impl": "torch" if prec == "fp32" else "torch-" + prec, "mode": "lora" if lora else "full", "torch": torch.__version__,
                  "params": sum(q.numel() for q in m.parameters()), "trainable": sum(q.numel() for q in params),
                  "tokens_per_s": round(B * T / med, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "rss_after_import_mb": round(base_rss, 1), "loss": round(float(loss), 4)}))
