#!/usr/bin/python3
"""Reference logits and loss of GPT-2 configurations with fixed random
weights, computed with PyTorch (float32), for tests/unit/test_torch_parity.c.

usage: gpt2_torch.py OUTDIR [SEED]
Writes OUTDIR/<name>/{config.json, model.safetensors, expected.json,
logits.f32} for each configuration below ("wide" stores its weights as F16,
and the reference computes with those rounded values), and
OUTDIR/small-lora/: a LoRA adapter built with numpy in PEFT's layout
(adapter_config.json, adapter_model.safetensors with PEFT's key names and
shapes, lora_A [r, in], lora_B [out, r], fan_in_fan_out) for "small", with
the logits PyTorch gives for the base weights with the adapter merged in
(W + alpha/r A^T B^T). The committed fixtures in tests/data/model/ came from
`gpt2_torch.py tests/data/model 1`."""
import json, math, os, struct, sys

import numpy as np
import torch

CONFIGS = {
    "small": dict(n_layer=2, n_head=4, n_embd=32, n_positions=16, vocab_size=257),
    "wide": dict(n_layer=3, n_head=2, n_embd=48, n_positions=24, vocab_size=300),
}
DTYPE = {"small": "F32", "wide": "F16"}
# PEFT's module names under GPT2LMHeadModel, and the Conv1D shapes [in, out]
LORA = dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"])
MODULES = {"attn.c_attn": (1, 3), "attn.c_proj": (1, 1), "mlp.c_fc": (1, 4), "mlp.c_proj": (4, 1)}


def peft_adapter(c, rng):
    """lora_A.weight [r, in], lora_B.weight [out, r] for every targeted module, PEFT's saved keys."""
    C, r = c["n_embd"], LORA["r"]
    t = {}
    for l in range(c["n_layer"]):
        for mod, (i, o) in MODULES.items():
            key = "base_model.model.transformer.h.%d.%s" % (l, mod)
            t[key + ".lora_A.weight"] = rng.normal(0, 0.2, (r, i * C)).astype(np.float32)
            t[key + ".lora_B.weight"] = rng.normal(0, 0.2, (o * C, r)).astype(np.float32)
    return t


def merged(c, base, ad):
    s = LORA["lora_alpha"] / LORA["r"]
    out = dict(base)
    for l in range(c["n_layer"]):
        for mod in MODULES:
            key = "base_model.model.transformer.h.%d.%s" % (l, mod)
            A, B = ad[key + ".lora_A.weight"], ad[key + ".lora_B.weight"]
            w = "h.%d.%s.weight" % (l, mod)
            out[w] = (base[w] + s * (A.T @ B.T)).astype(np.float32)
    return out


def write_safetensors(path, tensors, dtype="F32"):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4" if dtype == "F32" else "<f2")
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def params(c, rng):
    C, V, P, L = c["n_embd"], c["vocab_size"], c["n_positions"], c["n_layer"]
    n = lambda *s, std=0.1: rng.normal(0, std, s).astype(np.float32)
    t = {"wte.weight": n(V, C), "wpe.weight": n(P, C),
         "ln_f.weight": 1 + n(C), "ln_f.bias": n(C)}
    for l in range(L):
        p = "h.%d." % l
        t.update({p + "ln_1.weight": 1 + n(C), p + "ln_1.bias": n(C),
                  p + "ln_2.weight": 1 + n(C), p + "ln_2.bias": n(C),
                  p + "attn.c_attn.weight": n(C, 3 * C), p + "attn.c_attn.bias": n(3 * C),
                  p + "attn.c_proj.weight": n(C, C), p + "attn.c_proj.bias": n(C),
                  p + "mlp.c_fc.weight": n(C, 4 * C), p + "mlp.c_fc.bias": n(4 * C),
                  p + "mlp.c_proj.weight": n(4 * C, C), p + "mlp.c_proj.bias": n(C)})
    return t


def forward(c, t, tok):
    T = {k: torch.from_numpy(v) for k, v in t.items()}
    B, S = tok.shape
    C, H = c["n_embd"], c["n_head"]
    x = T["wte.weight"][tok] + T["wpe.weight"][torch.arange(S)]
    ln = lambda x, w, b: torch.nn.functional.layer_norm(x, (C,), T[w], T[b], 1e-5)
    mask = torch.tril(torch.ones(S, S, dtype=torch.bool))
    for l in range(c["n_layer"]):
        p = "h.%d." % l
        qkv = ln(x, p + "ln_1.weight", p + "ln_1.bias") @ T[p + "attn.c_attn.weight"] + T[p + "attn.c_attn.bias"]
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (z.view(B, S, H, C // H).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, S, C)
        x = x + y @ T[p + "attn.c_proj.weight"] + T[p + "attn.c_proj.bias"]
        h = ln(x, p + "ln_2.weight", p + "ln_2.bias") @ T[p + "mlp.c_fc.weight"] + T[p + "mlp.c_fc.bias"]
        h = torch.nn.functional.gelu(h, approximate="tanh")
        x = x + h @ T[p + "mlp.c_proj.weight"] + T[p + "mlp.c_proj.bias"]
    return ln(x, "ln_f.weight", "ln_f.bias") @ T["wte.weight"].T


def main():
    out, seed = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    torch.set_num_threads(1)
    for name, c in CONFIGS.items():
        rng = np.random.default_rng(seed + len(name))
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        t = params(c, rng)
        if DTYPE[name] == "F16":
            t = {k: v.astype(np.float16).astype(np.float32) for k, v in t.items()}
        write_safetensors(os.path.join(d, "model.safetensors"), t, DTYPE[name])
        json.dump(c, open(os.path.join(d, "config.json"), "w"))
        B, S = 2, c["n_positions"]
        tok = torch.from_numpy(rng.integers(0, c["vocab_size"], (B, S)))
        tgt = torch.roll(tok, -1, 1)
        tgt[:, -1] = -1
        logits = forward(c, t, tok)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, c["vocab_size"]), tgt.reshape(-1), ignore_index=-1)
        logits.detach().numpy().astype("<f4").tofile(os.path.join(d, "logits.f32"))
        json.dump({"tokens": tok.reshape(-1).tolist(), "targets": tgt.reshape(-1).tolist(), "B": B, "T": S,
                   "loss": float(loss), "torch": torch.__version__}, open(os.path.join(d, "expected.json"), "w"))
        if name == "small":
            ad = peft_adapter(c, rng)
            ld = os.path.join(out, "small-lora")
            os.makedirs(ld, exist_ok=True)
            write_safetensors(os.path.join(ld, "adapter_model.safetensors"), ad)
            conf = dict(peft_type="LORA", task_type="CAUSAL_LM", base_model_name_or_path="small", bias="none",
                        fan_in_fan_out=True, lora_dropout=0.0, inference_mode=True, **LORA)
            json.dump(conf, open(os.path.join(ld, "adapter_config.json"), "w"))
            lg = forward(c, merged(c, t, ad), tok)
            ll = torch.nn.functional.cross_entropy(lg.reshape(-1, c["vocab_size"]), tgt.reshape(-1), ignore_index=-1)
            lg.detach().numpy().astype("<f4").tofile(os.path.join(ld, "logits.f32"))
            json.dump({"loss": float(ll)}, open(os.path.join(ld, "expected.json"), "w"))


main()
