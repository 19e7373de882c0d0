#!/usr/bin/python3
"""Reference metagradients of a tiny LoRA training run, computed with PyTorch
autograd in float64 through every AdamW step, for tests/unit/test_exact.c.

usage: exact_torch.py OUTDIR [SEED]
Reads the "small" GPT-2 and its LoRA adapter (tests/data/model/small,
small-lora: the adapter is the run's start) and writes OUTDIR/run.json: the
records (tokens, first target), the hyper-parameters, the query, and what
PyTorch computes: the loss of each step, the query's loss after the run and
dq, d(query loss)/d(eps_i) for each record's weight eps_i in the training
loss (sum_b eps_b l_b / K per batch, K the batch's counted targets). The
data order is trail's: Fisher-Yates over splitmix64 seeded by (seed, epoch),
and the step is trail's AdamW (bias corrections folded into the step size
and epsilon, clipping to the global norm, linear warmup then cosine decay to
10%). The committed fixture came from `exact_torch.py tests/data/exact 1`."""
import json, math, os, struct, sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "data", "model")
M64 = (1 << 64) - 1
MODULES = {"attn.c_attn": "c_attn", "attn.c_proj": "c_proj", "mlp.c_fc": "c_fc", "mlp.c_proj": "c_proj"}
HYPER = dict(batch=2, seq=8, steps=7, lr=2e-2, warmup=2, clip=1.2, seed=5, beta1=0.9, beta2=0.95, eps=1e-8,
             weight_decay=0.0)


def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        o0, o1 = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + o0:8 + n + o1], dtype="<f4").reshape(v["shape"]).astype(np.float64)
    return out


def splitmix(s):
    s = (s + 0x9E3779B97F4A7C15) & M64
    z = s
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return s, z ^ (z >> 31)


def order(n, seed, e):
    s = seed ^ ((0xD1B54A32D192ED03 * (e + 1)) & M64)
    p = list(range(n))
    for i in range(n - 1, 0, -1):
        s, r = splitmix(s)
        j = r % (i + 1)
        p[i], p[j] = p[j], p[i]
    return p


def lr_at(peak, step, warmup, total):
    if step < warmup:
        return peak * (step + 1) / warmup
    f = min(1.0, (step - warmup) / (total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * f)))


def forward(c, T, lora, scale, tok):
    B, S = tok.shape
    C, H = c["n_embd"], c["n_head"]
    x = T["wte.weight"][tok] + T["wpe.weight"][torch.arange(S)]
    ln = lambda x, w, b: torch.nn.functional.layer_norm(x, (C,), T[w], T[b], 1e-5)
    mask = torch.tril(torch.ones(S, S, dtype=torch.bool))

    def lin(x, name):
        y = x @ T[name + ".weight"] + T[name + ".bias"]
        if name in lora:
            A, Bm = lora[name]
            y = y + scale * (x @ A.T) @ Bm.T
        return y

    for l in range(c["n_layer"]):
        p = "h.%d." % l
        qkv = lin(ln(x, p + "ln_1.weight", p + "ln_1.bias"), p + "attn.c_attn")
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (z.view(B, S, H, C // H).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, S, C)
        x = x + lin(y, p + "attn.c_proj")
        h = torch.nn.functional.gelu(lin(ln(x, p + "ln_2.weight", p + "ln_2.bias"), p + "mlp.c_fc"), approximate="tanh")
        x = x + lin(h, p + "mlp.c_proj")
    return ln(x, "ln_f.weight", "ln_f.bias") @ T["wte.weight"].T


def row(rec, S):
    tok, first = rec["tokens"], rec["first"]
    x = [tok[t] if t < len(tok) else 0 for t in range(S)]
    y = [tok[t + 1] if t + 1 < len(tok) and t + 1 >= first else -1 for t in range(S)]
    return x, y


def tokens_loss(c, T, lora, scale, x, y):
    """The summed token losses of each row [B], and the count of targets."""
    lg = forward(c, T, lora, scale, torch.tensor(x))
    V = c["vocab_size"]
    yt = torch.tensor(y)
    l = torch.nn.functional.cross_entropy(lg.reshape(-1, V), yt.reshape(-1), ignore_index=-1, reduction="none")
    return l.reshape(yt.shape).sum(1), int((yt >= 0).sum())


def main():
    out, seed = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    torch.set_num_threads(1)
    c = json.load(open(os.path.join(MODEL, "small", "config.json")))
    base = {k: torch.from_numpy(v) for k, v in read_safetensors(os.path.join(MODEL, "small", "model.safetensors")).items()}
    ad = read_safetensors(os.path.join(MODEL, "small-lora", "adapter_model.safetensors"))
    ac = json.load(open(os.path.join(MODEL, "small-lora", "adapter_config.json")))
    scale = ac["lora_alpha"] / ac["r"]
    names = sorted({k.split(".lora_")[0] for k in ad})
    rng = np.random.default_rng(seed)
    S = HYPER["seq"]
    recs = []
    for i in range(5):
        n = int(rng.integers(4, S + 2))
        recs.append({"tokens": rng.integers(0, c["vocab_size"], n).tolist(), "first": int(i % 3 == 1) * 2 + 1})
    query = {"tokens": rng.integers(0, c["vocab_size"], 7).tolist(), "first": 3}
    # the trainable weights: [A, B] per layer, PEFT's key "base_model.model.h.L.MOD"
    P = []
    for nm in names:
        P += [torch.tensor(ad[nm + ".lora_A.weight"]), torch.tensor(ad[nm + ".lora_B.weight"])]
    eps = torch.ones(len(recs), dtype=torch.float64, requires_grad=True)

    def lora_of(P):
        return {nm.replace("base_model.model.transformer.", ""): (P[2 * i], P[2 * i + 1]) for i, nm in enumerate(names)}

    H = HYPER
    m = [torch.zeros_like(p) for p in P]
    v = [torch.zeros_like(p) for p in P]
    w = [p.clone().requires_grad_(True) for p in P]
    N, losses, norms, epoch, perm = len(recs), [], [], None, None
    for t in range(H["steps"]):
        rows = []
        for b in range(H["batch"]):
            g = t * H["batch"] + b
            if g // N != epoch:
                epoch = g // N
                perm = order(N, H["seed"], epoch)
            rows.append(perm[g % N])
        xs, ys = zip(*(row(recs[r], S) for r in rows))
        lb, K = tokens_loss(c, base, lora_of(w), scale, list(xs), list(ys))
        L = (eps[torch.tensor(rows)] * lb).sum() / K
        losses.append(float(lb.sum() / K))
        gr = torch.autograd.grad(L, w, create_graph=True)
        norm = torch.sqrt(sum((gi * gi).sum() for gi in gr))
        norms.append(float(norm))
        s = H["clip"] / norm if float(norm) > H["clip"] else 1.0
        lr = lr_at(H["lr"], t, H["warmup"], H["steps"])
        b1c, b2c = 1 - H["beta1"] ** (t + 1), 1 - H["beta2"] ** (t + 1)
        a, k2 = lr / b1c, 1 / math.sqrt(b2c)
        nw = []
        for i in range(len(w)):
            gc = gr[i] * s
            m[i] = H["beta1"] * m[i] + (1 - H["beta1"]) * gc
            v[i] = H["beta2"] * v[i] + (1 - H["beta2"]) * gc * gc
            nw.append(w[i] * (1 - lr * H["weight_decay"]) - a * m[i] / (torch.sqrt(v[i]) * k2 + H["eps"]))
        w = nw
    qx, qy = row({"tokens": query["tokens"], "first": query["first"]}, len(query["tokens"]) - 1)
    ql, qk = tokens_loss(c, base, lora_of(w), scale, [qx], [qy])
    Q = ql.sum() / qk
    dq = torch.autograd.grad(Q, eps)[0]
    os.makedirs(out, exist_ok=True)
    json.dump({"hyperparameters": H, "records": recs, "query": query, "losses": losses, "grad_norms": norms,
               "query_loss": float(Q), "dq": dq.tolist(), "torch": torch.__version__},
              open(os.path.join(out, "run.json"), "w"), indent=1)


main()
