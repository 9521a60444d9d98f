"""Milestone 5 — GGUF export (M5.4): llama.cpp tensor names and the Q/K permutation.

The region is checked directly on a tiny random Llama (names against gguf-py's own name
table, RoPE equivalence of the permuted rows), then the embedded model is exported and
loaded back with transformers' GGUF loader."""

from __future__ import annotations

import functools
import re

import gguf
import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ftlab.course.teaching import expect, explained
from ftlab.export import export_gguf, gguf_tensor, verify_gguf
from ftlab.models import load_base_model
from ftlab.models.measure import chat_prompt
from ftlab.models.tiny import tiny_model

pytestmark = pytest.mark.m5

QUESTIONS = ("What is the capital of France?", "How many legs does a spider have?",
             "What day comes after Monday?")
ROPE_CAUSE = ("unpermuted Q/K: the file loads, but llama.cpp rotates interleaved pairs "
              "(2j, 2j+1) of each head while Hugging Face rotates halves (j, j + head_dim/2); "
              "reorder the q_proj and k_proj rows of each head from [first half | second half] "
              "to interleaved pairs")
LAYOUT_CAUSE = ("Q/K rows moved, but not into llama.cpp's layout: view the weight as "
                "(n, 2, head_dim/2, hidden), swap axes 1 and 2, view it back; n is "
                "num_attention_heads for q_proj and num_key_value_heads for k_proj "
                "(grouped-query attention)")
NAMES_CAUSE = ("misspelt or swapped tensor name: llama.cpp and transformers' GGUF loader find "
               "weights by these exact names (token_embd, attn_q, attn_k, attn_v, attn_output, "
               "ffn_gate, ffn_up, ffn_down, attn_norm, ffn_norm, output_norm, output); a weight "
               "under another name is skipped, left uninitialised, or lands in the wrong place")


@functools.cache
def _name_map(n_layers: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)


def _llama_cpp_name(hf_name: str, n_layers: int) -> str:
    """The name gguf-py's tensor map (llama.cpp's table) gives a Hugging Face Llama name."""
    return _name_map(n_layers).get_name(hf_name, try_suffixes=(".weight",))


def _gguf_tensor(hf_name, tensor, config):
    with explained(task="M5.4", what=f"gguf_tensor({hf_name!r}, tensor of shape "
                   f"{tuple(tensor.shape)}, config)", expected="(llama.cpp name, tensor)",
                   cause="names: a fixed table outside the blocks, model.layers.{i}.<module>."
                         "weight -> blk.{i}.<llama.cpp name>.weight inside; Q/K rows: view as "
                         "(n, 2, head_dim/2, hidden) with n the heads of that projection"):
        return gguf_tensor(hf_name, tensor, config)


def _check_names(pairs: list[tuple[str, str, str]], where: str) -> None:
    """``pairs``: (Hugging Face name, llama.cpp name, name returned)."""
    bad = [(hf, want, got) for hf, want, got in pairs if got != want]
    lost = [hf for hf, want, got in bad
            if (block := re.match(r"model\.layers\.(\d+)\.", hf))
            and got.startswith("blk.") and not re.match(rf"blk\.{block.group(1)}\.", got)]
    cause = ("layer index lost: model.layers.{i}.* must become blk.{i}.*, keeping i, or the "
             "layers overwrite each other" if lost else NAMES_CAUSE)
    expect(not bad, task="M5.4", what=f"GGUF tensor names {where} ({len(bad)} of {len(pairs)} "
           "wrong)", expected=[f"{hf} -> {want}" for hf, want, _ in bad[:3]],
           got=[got for _, _, got in bad[:3]], cause=cause)


def test_m5_4_tensor_names_are_llama_cpp_names():
    model = tiny_model("llama")
    n_layers = model.config.num_hidden_layers
    pairs = [(hf, _llama_cpp_name(hf, n_layers), _gguf_tensor(hf, p.detach(), model.config)[0])
             for hf, p in model.named_parameters()]
    _check_names(pairs, "returned by gguf_tensor for a tiny Llama")


def test_m5_4_only_q_and_k_rows_move():
    model = tiny_model("llama")
    for hf, p in model.named_parameters():
        weight = p.detach()
        out = _gguf_tensor(hf, weight.clone(), model.config)[1]
        expect(tuple(out.shape) == tuple(weight.shape), task="M5.4", what=f"shape of {hf}",
               expected=tuple(weight.shape), got=tuple(out.shape),
               cause="GGUF stores the Hugging Face (out, in) shape as is; llama.cpp reverses "
                     "the dimensions itself, so do not transpose")
        if hf.endswith(("q_proj.weight", "k_proj.weight")):
            rows = sorted(map(tuple, out.tolist())) == sorted(map(tuple, weight.tolist()))
            expect(rows, task="M5.4", what=f"rows of {hf}", expected="the same rows, reordered",
                   got="rows with changed values", cause="permute rows only: reshape, swap two "
                   "axes, reshape back; no transpose of the matrix, no arithmetic")
        else:
            expect(torch.equal(out, weight), task="M5.4", what=f"values of {hf}",
                   expected="unchanged", got="changed",
                   cause="only q_proj and k_proj feed RoPE; v_proj, o_proj, the MLP, norms and "
                         "embeddings are written as they are")


BLOCK_MODULES = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "kv",
                 "self_attn.o_proj": "o", "mlp.gate_proj": "up", "mlp.up_proj": "up",
                 "mlp.down_proj": "down", "input_layernorm": "norm",
                 "post_attention_layernorm": "norm"}


def _config(heads, kv_heads, hidden, head_dim, layers=2):
    return LlamaConfig(vocab_size=16, hidden_size=hidden, intermediate_size=8,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, head_dim=head_dim)


def _shape(kind, config):
    """Hugging Face shape of a parameter of ``kind`` (see BLOCK_MODULES) under ``config``."""
    hidden, d = config.hidden_size, config.head_dim
    return {"q": (config.num_attention_heads * d, hidden),
            "k": (config.num_key_value_heads * d, hidden),
            "kv": (config.num_key_value_heads * d, hidden),
            "o": (hidden, config.num_attention_heads * d), "up": (config.intermediate_size, hidden),
            "down": (hidden, config.intermediate_size), "norm": (hidden,),
            "embed": (config.vocab_size, hidden)}[kind]


def test_m5_4_names_keep_every_layer_index():
    config = _config(4, 2, 16, 4, layers=12)
    names = {"model.embed_tokens.weight": "embed", "model.norm.weight": "norm",
             "lm_head.weight": "embed"}
    names |= {f"model.layers.{i}.{module}.weight": kind for i in (0, 1, 9, 10, 11)
              for module, kind in BLOCK_MODULES.items()}
    pairs = []
    for hf, kind in names.items():
        with explained(task="M5.4", what=f"gguf_tensor({hf!r}, ...) in a 12-layer model",
                       expected="(llama.cpp name, tensor)",
                       cause="the layer index is every digit between 'model.layers.' and the next "
                             "'.' (10 and 11 have two), kept as is in blk.{i}; match the module "
                             "name exactly, not by a substring"):
            got = gguf_tensor(hf, torch.randn(_shape(kind, config)), config)[0]
        pairs.append((hf, _llama_cpp_name(hf, 12), got))
    _check_names(pairs, "of layers 0, 1, 9, 10 and 11 of a 12-layer Llama")


def _interleaved(weight, heads, inverse=False):
    """The spec's row order, row by row: head h's rows [x_0 .. x_{d/2-1} | y_0 .. y_{d/2-1}]
    become [x_0, y_0, x_1, y_1, ..] (``inverse``: the other way round)."""
    d = weight.shape[0] // heads
    out = torch.empty_like(weight)
    for h in range(heads):
        for j in range(d // 2):
            for src, dst in ((h * d + j, h * d + 2 * j), (h * d + d // 2 + j, h * d + 2 * j + 1)):
                if inverse:
                    src, dst = dst, src
                out[dst] = weight[src]
    return out


HEAD_LAYOUTS = {  # (heads, key/value heads, hidden, head_dim, dtype)
    "bfloat16 weights, 8 heads, 2 key/value heads": (8, 2, 64, 8, torch.bfloat16),
    "grouped-query attention: 6 heads, 2 key/value heads": (6, 2, 24, 4, torch.float32),
    "multi-query attention: 3 heads of 6, 1 key/value head": (3, 1, 18, 6, torch.float32),
    "4 heads of 12 in a 32-wide model (head_dim set)": (4, 4, 32, 12, torch.float32)}


def _layout_cause(out, weight, heads, config):
    """Which plausible mistake ``out`` is, for a projection with ``heads`` heads."""
    if torch.equal(out, weight):
        return ROPE_CAUSE
    if torch.equal(out, _interleaved(weight, heads, inverse=True)):
        return ("the inverse permutation (llama.cpp's layout back to Hugging Face's): " +
                LAYOUT_CAUSE)
    for other in {config.num_attention_heads, config.num_key_value_heads,
                  config.num_attention_heads // config.num_key_value_heads} - {heads}:
        if weight.shape[0] % (2 * other) == 0 and torch.equal(out, _interleaved(weight, other)):
            return (f"permuted as {other} heads instead of {heads}: n is num_attention_heads "
                    "for q_proj and num_key_value_heads for k_proj (grouped-query attention), "
                    "not the group size")
    return LAYOUT_CAUSE


@pytest.mark.parametrize("layout", list(HEAD_LAYOUTS))
def test_m5_4_qk_rows_interleaved_per_head(layout):
    heads, kv_heads, hidden, head_dim, dtype = HEAD_LAYOUTS[layout]
    config = _config(heads, kv_heads, hidden, head_dim)
    g = torch.Generator().manual_seed(0)
    for module, n in (("q_proj", heads), ("k_proj", kv_heads)):
        hf = f"model.layers.1.self_attn.{module}.weight"
        weight = torch.randn(n * head_dim, hidden, generator=g).to(dtype)
        given = weight.clone()
        with explained(task="M5.4", what=f"gguf_tensor({hf!r}, {tuple(weight.shape)} {dtype}) "
                       f"with {layout}", expected="(name, tensor of the same shape)",
                       cause="view the weight as (n, 2, rows // n // 2, hidden): n is "
                             "num_attention_heads for q_proj and num_key_value_heads for k_proj "
                             "(grouped-query attention; not the group size), and head_dim is "
                             "rows // n — a config may set head_dim != hidden_size / "
                             "num_attention_heads"):
            out = gguf_tensor(hf, weight, config)[1]
        expect(torch.equal(weight, given), task="M5.4", what=f"the {module} tensor passed in",
               expected="unchanged", got="changed in place",
               cause="build the permuted tensor with reshape/transpose (a new tensor); never "
                     "write into the tensor passed in — export_gguf passes the model's own "
                     "weights")
        expect(tuple(out.shape) == tuple(weight.shape) and out.dtype == dtype, task="M5.4",
               what=f"shape and dtype of {module} with {layout}",
               expected=f"{tuple(weight.shape)} {dtype}", got=f"{tuple(out.shape)} {out.dtype}",
               cause="permute rows only: same shape, same dtype (export_gguf converts to the "
                     "file's tensor type itself)")
        want = _interleaved(weight, n)
        expect(torch.equal(out, want), task="M5.4",
               what=f"row order of {module} with {layout} ({n} heads of {head_dim})",
               expected="each head's rows [first half | second half] -> interleaved pairs",
               got="another order", cause=_layout_cause(out, weight, n, config))


def _rotate_pairs(x: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """llama.cpp's RoPE on ``x`` (heads, T, head_dim): coordinates (2j, 2j+1) of the vector
    at position t are rotated by the angle t * inv_freq[j]."""
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    angle = torch.arange(x.shape[1], dtype=torch.float64)[:, None] * inv_freq.double()
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angle), angle)).flatten(-2)


def test_m5_4_qk_rows_match_llama_cpp_rope():
    model = tiny_model("llama")
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    torch.manual_seed(0)
    x = torch.randn(7, cfg.hidden_size)
    positions = torch.arange(7)[None]
    cos, sin = model.model.rotary_emb(x[None], positions)
    inv_freq = model.model.rotary_emb.inv_freq
    for hf, p in model.named_parameters():
        if not hf.endswith(("q_proj.weight", "k_proj.weight")):
            continue
        weight = p.detach()
        heads = weight.shape[0] // head_dim
        out = _gguf_tensor(hf, weight.clone(), cfg)[1]
        # Hugging Face: rotate halves of each head (the model's own apply_rotary_pos_emb)
        v = (x @ weight.T).reshape(7, heads, head_dim).transpose(0, 1)[None]
        v, _ = apply_rotary_pos_emb(v, v, cos, sin)
        hf_scores = (v[0] @ v[0].transpose(-1, -2)).double()
        # llama.cpp: rotate interleaved pairs of the rows gguf_tensor returned
        u = _rotate_pairs((x @ out.T).reshape(7, heads, head_dim).transpose(0, 1), inv_freq)
        gguf_scores = u @ u.transpose(-1, -2)
        diff = (gguf_scores - hf_scores).abs().max().item()
        expect(diff < 1e-4, task="M5.4",
               what=f"RoPE'd dot products of {hf} rows, llama.cpp layout vs Hugging Face",
               expected="equal (max |difference| < 1e-4)", got=f"max |difference| {diff:.3g}",
               cause=ROPE_CAUSE if torch.equal(out, weight) else LAYOUT_CAUSE)


@pytest.fixture(scope="module")
def embedded():
    return load_base_model()


def test_m5_4_embedded_model_round_trip(embedded, tmp_path):
    model, tokenizer = embedded
    with explained(task="M5.4", what="export_gguf of the embedded model (f16)",
                   expected="a GGUF file", cause="export_gguf writes what gguf_tensor returns "
                   "for every weight: a llama.cpp name and a tensor of the same shape"):
        written = export_gguf(model, tokenizer, tmp_path / "model.gguf", "f16", progress=False)
    n_layers = model.config.num_hidden_layers
    names = {t.name for t in gguf.GGUFReader(written.path).tensors}
    want = {_llama_cpp_name(hf, n_layers) for hf, _ in model.named_parameters()}  # head tied
    expect(names == want, task="M5.4", what="tensor names in the exported file",
           expected=f"llama.cpp names; missing here: {sorted(want - names)[:3]}",
           got=f"unexpected: {sorted(names - want)[:3]}", cause=NAMES_CAUSE)
    check = verify_gguf(written.path, model, tokenizer,
                        [chat_prompt(tokenizer, q) for q in QUESTIONS])
    expect(check.max_logit_diff <= 1e-2, task="M5.4",
           what="max |logit difference| of the f16 GGUF loaded back by transformers",
           expected="<= 0.01 (f16 rounding only)", got=f"{check.max_logit_diff:.3g}",
           cause=ROPE_CAUSE + "; or Q/K permuted with the wrong head count (q_proj "
                 "num_attention_heads, k_proj num_key_value_heads)")
    expect(check.generations_equal, task="M5.4",
           what="greedy generations of the GGUF model vs the original",
           expected=check.reference_generations, got=check.gguf_generations,
           cause=ROPE_CAUSE)

