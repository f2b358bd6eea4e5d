"""Conversion rules for the Qwen2.5 backbone (omni_jax/models/qwen2.py).

Two PyTorch layouts:
  "hf"       transformers Qwen2ForCausalLM: separate q_proj / k_proj / v_proj (with bias).
  "release"  Baichuan-Omni-1.5: one `W_pack` linear whose rows are [q | k | v]
             (reference_state_dict.tsv: model.layers.N.self_attn.W_pack.{weight,bias}).
Both put the decoder under `model.` and the untied head at `lm_head.weight`.

Our W_pack is grouped by KV head, (embed, kv_heads, q_per_kv + 2, head_dim); the
transforms below permute between that and the PyTorch row orders (exact, no arithmetic).
"""

from __future__ import annotations

from omni_jax.convert.mapping import Rule, concat, linear, prefixed, same, split
from omni_jax.models.qwen2 import Qwen2Config

FLAVOURS = ("hf", "release")


def _qkv_rows_to_grouped(cfg: Qwen2Config, q, k, v):
    """q (H*hd, ...), k/v (KV*hd, ...) rows -> (KV, R+2, hd, ...) grouped slots."""
    kvh, r, hd = cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim
    tail = q.shape[1:]
    q = q.reshape((kvh, r, hd) + tail)
    k = k.reshape((kvh, 1, hd) + tail)
    v = v.reshape((kvh, 1, hd) + tail)
    return concat([q, k, v], axis=1)


def _grouped_to_qkv_rows(cfg: Qwen2Config, g):
    """(KV, R+2, hd, ...) -> q (H*hd, ...), k (KV*hd, ...), v (KV*hd, ...)."""
    kvh, r, hd = cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim
    tail = g.shape[3:]
    q = g[:, :r].reshape((kvh * r * hd,) + tail)
    k = g[:, r].reshape((kvh * hd,) + tail)
    v = g[:, r + 1].reshape((kvh * hd,) + tail)
    return q, k, v


def _row_sizes(cfg: Qwen2Config):
    return [cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim]


def _qkv_rules(cfg: Qwen2Config, flavour: str) -> list[Rule]:
    p = "layers/self_attn/W_pack/"
    # kernel (E, KV, R+2, hd) <-> rows-first (KV, R+2, hd, E)
    k_to_rows = lambda w: _grouped_to_qkv_rows(cfg, w.transpose(1, 2, 3, 0))
    rows_to_k = lambda q, k, v: _qkv_rows_to_grouped(cfg, q, k, v).transpose(3, 0, 1, 2)
    b_to_rows = lambda b: _grouped_to_qkv_rows(cfg, b)
    rows_to_b = lambda q, k, v: _qkv_rows_to_grouped(cfg, q, k, v)
    if flavour == "release":
        base = "model.layers.{i}.self_attn.W_pack."
        rules = [Rule(p + "kernel", base + "weight",
                      lambda w: concat(k_to_rows(w), axis=0),
                      lambda w: rows_to_k(*split(w, _row_sizes(cfg), axis=0)))]
        if cfg.qkv_bias:
            rules.append(Rule(p + "bias", base + "bias",
                              lambda b: concat(b_to_rows(b), axis=0),
                              lambda b: rows_to_b(*split(b, _row_sizes(cfg), axis=0))))
        return rules
    base = "model.layers.{i}.self_attn."
    rules = [Rule(p + "kernel", tuple(base + f"{n}_proj.weight" for n in "qkv"),
                  k_to_rows, lambda qkv: rows_to_k(*qkv))]
    if cfg.qkv_bias:
        rules.append(Rule(p + "bias", tuple(base + f"{n}_proj.bias" for n in "qkv"),
                          b_to_rows, lambda qkv: rows_to_b(*qkv)))
    return rules


def rules(cfg: Qwen2Config, flavour: str = "release") -> list[Rule]:
    """Rules for a Qwen2LM's params (relative paths), in the release's registration order."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown Qwen2 checkpoint flavour {flavour!r}; use one of {FLAVOURS}")
    H, hd, E = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    L = "model.layers.{i}."
    out = [same("embed_tokens/embedding", "model.embed_tokens.weight")]
    out += _qkv_rules(cfg, flavour)
    out += [
        Rule("layers/self_attn/o_proj/kernel", L + "self_attn.o_proj.weight",
             lambda w: w.reshape(H * hd, E).T, lambda w: w.T.reshape(H, hd, E)),
        linear("layers/mlp/gate_proj/kernel", L + "mlp.gate_proj.weight"),
        linear("layers/mlp/down_proj/kernel", L + "mlp.down_proj.weight"),
        linear("layers/mlp/up_proj/kernel", L + "mlp.up_proj.weight"),
        same("layers/input_layernorm/scale", L + "input_layernorm.weight"),
        same("layers/post_attention_layernorm/scale", L + "post_attention_layernorm.weight"),
        same("norm/scale", "model.norm.weight"),
        linear("lm_head/kernel", "lm_head.weight"),
    ]
    return out


# Buffers some PyTorch checkpoints carry that hold no weights.
IGNORE = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\.inv_freq")


def hf_config_dict(cfg: Qwen2Config) -> dict:
    """A transformers Qwen2Config dict for exporting to Hugging Face names."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": False, "hidden_act": "silu", "max_position_embeddings": 32768,
        "use_sliding_window": False, "torch_dtype": cfg.param_dtype,
    }


def config_from_hf(d: dict, **overrides) -> Qwen2Config:
    """Our Qwen2Config from a transformers Qwen2 config dict (config.json)."""
    if d.get("tie_word_embeddings"):
        raise ValueError("tied word embeddings are not supported: the Qwen2.5-7B layout unties lm_head")
    rope = d.get("rope_theta", (d.get("rope_parameters") or {}).get("rope_theta", 1e6))
    kw = dict(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_layers=d["num_hidden_layers"],
        num_heads=d["num_attention_heads"], num_kv_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
        head_dim=d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"],
        intermediate_size=d["intermediate_size"], rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=rope,
    )
    kw.update(overrides)
    return Qwen2Config(**kw)


__all__ = ["rules", "IGNORE", "FLAVOURS", "hf_config_dict", "config_from_hf", "prefixed"]
