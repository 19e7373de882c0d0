#!/usr/bin/python3
"""Reference logits and loss of Llama-family configurations (LlamaForCausalLM,
Qwen2ForCausalLM, MistralForCausalLM) with fixed random weights, computed
with PyTorch in float32 as Hugging Face's modeling code computes them
(RMSNorm, rotary positions with rotate_half and rope_scaling, grouped-query
attention by repeating key/value heads, SwiGLU), for
tests/unit/test_torch_parity.c.

usage: llama_torch.py OUTDIR [SEED]
Writes OUTDIR/<name>/{config.json, model.safetensors, expected.json,
logits.f32, grads.safetensors} for each configuration below ("mistral-bf16" stores its weights
as BF16 and the reference computes with those rounded values), and
OUTDIR/llama-gqa-lora/: a PEFT adapter (lora_A [r, in], lora_B [out, r] on
all seven projections) with PyTorch's logits for the merged weights. grads
holds the mean loss's gradients by autograd in float64 (of the LoRA
matrices for the adapter). The
committed fixtures in tests/data/model/ came from
`llama_torch.py tests/data/model 1`."""
import json, math, os, struct, sys

import numpy as np
import torch

CONFIGS = {
    # GQA (4 query heads over 2 key/value heads), untied head, llama3 rope scaling that bites
    "llama-gqa": dict(architectures=["LlamaForCausalLM"], model_type="llama", num_hidden_layers=2,
                      hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=24, vocab_size=97, rms_norm_eps=1e-5, rope_theta=500000.0,
                      rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                        original_max_position_embeddings=16),
                      tie_word_embeddings=False, hidden_act="silu"),
    # one key/value head for all (MQA), q/k/v biases, tied embeddings, linear rope scaling
    "qwen2-tied": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", num_hidden_layers=2,
                       hidden_size=24, intermediate_size=40, num_attention_heads=3, num_key_value_heads=1,
                       max_position_embeddings=20, vocab_size=61, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       rope_scaling=dict(type="linear", factor=2.0), tie_word_embeddings=True, hidden_act="silu",
                       use_sliding_window=False),
    # Mistral without a sliding window that bites, head_dim given apart from hidden/heads, BF16 weights
    "mistral-bf16": dict(architectures=["MistralForCausalLM"], model_type="mistral", num_hidden_layers=3,
                         hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=12, max_position_embeddings=16, vocab_size=80, rms_norm_eps=1e-5,
                         rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False, hidden_act="silu"),
}
KINDS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"])


def dims(c):
    hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return c["hidden_size"], hd, c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]


def params(c, rng):
    C, hd, nh, nkv, F = dims(c)
    n = lambda *s, std=0.1: rng.normal(0, std, s).astype(np.float32)
    t = {"model.embed_tokens.weight": n(c["vocab_size"], C), "model.norm.weight": 1 + n(C)}
    if not c["tie_word_embeddings"]:
        t["lm_head.weight"] = n(c["vocab_size"], C)
    shapes = {"self_attn.q_proj": (nh * hd, C), "self_attn.k_proj": (nkv * hd, C), "self_attn.v_proj": (nkv * hd, C),
              "self_attn.o_proj": (C, nh * hd), "mlp.gate_proj": (F, C), "mlp.up_proj": (F, C), "mlp.down_proj": (C, F)}
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        t[p + "input_layernorm.weight"] = 1 + n(C)
        t[p + "post_attention_layernorm.weight"] = 1 + n(C)
        for k in KINDS:
            t[p + k + ".weight"] = n(*shapes[k])
            if c["model_type"] == "qwen2" and k in KINDS[:3]:
                t[p + k + ".bias"] = n(shapes[k][0])
    return t


def inv_freq(c):
    _, hd, _, _, _ = dims(c)
    inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    rs = c.get("rope_scaling")
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return inv / rs["factor"]
    # llama3, as transformers' _compute_llama3_parameters
    f, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
    wl = 2 * math.pi / inv
    out = torch.where(wl > old / lo, inv / f, inv)
    smooth = (old / wl - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / f + smooth * out
    mid = ~(wl < old / hi) * ~(wl > old / lo)
    return torch.where(mid, smoothed, out)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(c, t, tok, T=None, ad=None):
    """Logits [B, S, V]; T: the tensors as torch leaves (else from t, float32); ad: LoRA leaves, unmerged."""
    T = T if T is not None else {k: torch.from_numpy(v) for k, v in t.items()}
    B, S = tok.shape
    C, hd, nh, nkv, F = dims(c)
    eps = c["rms_norm_eps"]
    rms = lambda x, w: T[w] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    s = LORA["lora_alpha"] / LORA["r"]

    def lin(x, name):
        y = x @ T[name + ".weight"].T + (T[name + ".bias"] if name + ".bias" in T else 0)
        key = "base_model.model." + name
        if ad is not None and key + ".lora_A.weight" in ad:
            y = y + s * (x @ ad[key + ".lora_A.weight"].T) @ ad[key + ".lora_B.weight"].T
        return y
    freqs = torch.arange(S).float()[:, None] * inv_freq(c)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    dt = T["model.norm.weight"].dtype
    cos, sin = emb.cos().to(dt), emb.sin().to(dt)
    mask = torch.tril(torch.ones(S, S, dtype=torch.bool))
    x = T["model.embed_tokens.weight"][tok]
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = rms(x, p + "input_layernorm.weight")
        q = lin(h, p + "self_attn.q_proj").view(B, S, nh, hd).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").view(B, S, nkv, hd).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(B, S, nkv, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, S, nh * hd)
        x = x + lin(y, p + "self_attn.o_proj")
        h = rms(x, p + "post_attention_layernorm.weight")
        x = x + lin(torch.nn.functional.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"),
                    p + "mlp.down_proj")
    head = T["model.embed_tokens.weight"] if c["tie_word_embeddings"] else T["lm_head.weight"]
    return rms(x, "model.norm.weight") @ head.T


def bf16(a):
    """Round float32 to bfloat16 (nearest even), returned as float32, and the raw 16 bits."""
    u = a.astype("<f4").view("<u4").astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    return (r.astype("<u4") << 16).view("<f4"), r


def write_safetensors(path, tensors, dtype="F32"):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        if dtype == "BF16":
            b = bf16(np.ascontiguousarray(tensors[name], dtype="<f4"))[1].tobytes()
        else:
            b = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(tensors[name].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def peft_adapter(c, rng):
    r = LORA["r"]
    ad, base_shapes = {}, params(c, np.random.default_rng(0))
    for l in range(c["num_hidden_layers"]):
        for k in KINDS:
            out, inp = base_shapes["model.layers.%d.%s.weight" % (l, k)].shape
            key = "base_model.model.model.layers.%d.%s" % (l, k)
            ad[key + ".lora_A.weight"] = rng.normal(0, 0.2, (r, inp)).astype(np.float32)
            ad[key + ".lora_B.weight"] = rng.normal(0, 0.2, (out, r)).astype(np.float32)
    return ad


def merged(c, base, ad):
    s = LORA["lora_alpha"] / LORA["r"]
    out = dict(base)
    for l in range(c["num_hidden_layers"]):
        for k in KINDS:
            key = "base_model.model.model.layers.%d.%s" % (l, k)
            w = "model.layers.%d.%s.weight" % (l, k)
            out[w] = (base[w] + s * (ad[key + ".lora_B.weight"] @ ad[key + ".lora_A.weight"])).astype(np.float32)
    return out


def grads(c, t, tok, tgt, ad=None):
    """The mean loss's gradient of every parameter (or of every LoRA matrix), by autograd in float64."""
    leaves = {k: torch.from_numpy(v).double().requires_grad_() for k, v in (ad or t).items()}
    T = leaves if ad is None else {k: torch.from_numpy(v).double() for k, v in t.items()}
    logits = forward(c, t, tok, T, leaves if ad is not None else None)
    torch.nn.functional.cross_entropy(logits.reshape(-1, c["vocab_size"]), tgt.reshape(-1), ignore_index=-1).backward()
    return {k: v.grad.numpy().astype(np.float32) for k, v in leaves.items()}


def run(d, c, t, tok, tgt, extra, ad=None):
    logits = forward(c, t if ad is None else merged(c, t, ad), tok)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, c["vocab_size"]), tgt.reshape(-1), ignore_index=-1)
    logits.detach().numpy().astype("<f4").tofile(os.path.join(d, "logits.f32"))
    json.dump(dict(loss=float(loss), torch=torch.__version__, **extra), open(os.path.join(d, "expected.json"), "w"))
    write_safetensors(os.path.join(d, "grads.safetensors"), grads(c, t, tok, tgt, ad))


def main():
    out, seed = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    torch.set_num_threads(1)
    for name, c in CONFIGS.items():
        rng = np.random.default_rng(seed + 3 * len(name))
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        t = params(c, rng)
        dtype = "BF16" if name.endswith("bf16") else "F32"
        if dtype == "BF16":
            t = {k: bf16(v)[0] for k, v in t.items()}
        write_safetensors(os.path.join(d, "model.safetensors"), t, dtype)
        json.dump(c, open(os.path.join(d, "config.json"), "w"))
        B, S = 2, c["max_position_embeddings"]
        tok = torch.from_numpy(rng.integers(0, c["vocab_size"], (B, S)))
        tgt = torch.roll(tok, -1, 1)
        tgt[:, -1] = -1
        run(d, c, t, tok, tgt, dict(tokens=tok.reshape(-1).tolist(), targets=tgt.reshape(-1).tolist(), B=B, T=S))
        if name == "llama-gqa":
            ad = peft_adapter(c, rng)
            ld = os.path.join(out, name + "-lora")
            os.makedirs(ld, exist_ok=True)
            write_safetensors(os.path.join(ld, "adapter_model.safetensors"), ad)
            conf = dict(peft_type="LORA", task_type="CAUSAL_LM", base_model_name_or_path=name, bias="none",
                        fan_in_fan_out=False, lora_dropout=0.0, inference_mode=True, **LORA)
            json.dump(conf, open(os.path.join(ld, "adapter_config.json"), "w"))
            run(ld, c, t, tok, tgt, {}, ad)


main()
