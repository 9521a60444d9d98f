"""GGUF export of a Llama model for llama.cpp, and a round-trip check through transformers.

M5.4 is :func:`gguf_tensor`: the llama.cpp name of each Hugging Face parameter and the
row permutation of ``q_proj``/``k_proj`` that llama.cpp's RoPE layout needs. Given around
it: :func:`export_gguf` writes the file (architecture and tokenizer metadata, chat
template, f32/f16/q8_0 tensors) with the ``gguf`` package's pure-Python ``GGUFWriter``,
and :func:`verify_gguf` loads the file back with transformers' GGUF loader and compares
logits, greedy generations and tokenization with the model it came from.

A file written without the Q/K permutation loads everywhere and produces wrong outputs:
nothing fails until the logits are compared, which is why :func:`verify_gguf` exists.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, PretrainedConfig,
                          PreTrainedModel, PreTrainedTokenizerBase)

from ftlab.errors import ArtifactError
from ftlab.lora import lora_layers
from ftlab.progress import progress_bar

TENSOR_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
"""``tensor_type`` of :func:`export_gguf` -> the ``general.file_type`` it declares."""

_QTYPE = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
          "q8_0": gguf.GGMLQuantizationType.Q8_0}
_BLOCK_PARAMETERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                     "input_layernorm", "post_attention_layernorm")
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


def gguf_tensor(name: str, tensor: torch.Tensor,
                config: PretrainedConfig) -> tuple[str, torch.Tensor]:
    """The GGUF (llama.cpp) name of a Hugging Face Llama parameter, and its tensor as
    llama.cpp expects it.

    ``name`` is a parameter name of a ``LlamaForCausalLM`` and ``tensor`` its weight, in
    Hugging Face's shape (``out_features, in_features`` for a linear layer, ``(hidden,)``
    for a norm). ``config`` is the model's config; only ``num_attention_heads`` and
    ``num_key_value_heads`` are read. ``name`` is always one of the names below
    (:func:`export_gguf` checks this before calling). Nothing is read or written here.

    Names (``{i}`` is the layer index, kept as is, whatever its number of digits: layer 10
    is ``blk.10``; each module name matched exactly, never as a substring)::

        model.embed_tokens.weight                      token_embd.weight
        model.layers.{i}.self_attn.q_proj.weight       blk.{i}.attn_q.weight
        model.layers.{i}.self_attn.k_proj.weight       blk.{i}.attn_k.weight
        model.layers.{i}.self_attn.v_proj.weight       blk.{i}.attn_v.weight
        model.layers.{i}.self_attn.o_proj.weight       blk.{i}.attn_output.weight
        model.layers.{i}.mlp.gate_proj.weight          blk.{i}.ffn_gate.weight
        model.layers.{i}.mlp.up_proj.weight            blk.{i}.ffn_up.weight
        model.layers.{i}.mlp.down_proj.weight          blk.{i}.ffn_down.weight
        model.layers.{i}.input_layernorm.weight        blk.{i}.attn_norm.weight
        model.layers.{i}.post_attention_layernorm.weight  blk.{i}.ffn_norm.weight
        model.norm.weight                              output_norm.weight
        lm_head.weight                                 output.weight

    Tensors: returned unchanged (same object, shape, dtype and values), except ``q_proj`` and
    ``k_proj``, whose rows are permuted into a new tensor of the same shape
    ``(n * head_dim, hidden)`` and dtype. The tensor passed in is never modified (it may be
    the model's own weight). ``head_dim`` is the projection's rows // ``n``: a config may set
    ``head_dim`` to something other than ``hidden_size / num_attention_heads``.

    Why the permutation: RoPE rotates pairs of coordinates of each head's query and key.
    Hugging Face's Llama pairs coordinate ``j`` with ``j + head_dim/2`` (it rotates the
    two halves of the head, ``rotate_half``); llama.cpp pairs ``2j`` with ``2j + 1``
    (interleaved pairs, as Meta's original checkpoints did). So the rows of each head are
    reordered from ``[x_0 .. x_{d/2-1} | y_0 .. y_{d/2-1}]`` to ``[x_0, y_0, x_1, y_1, ..]``
    (``d = head_dim``): view the weight as ``(n, 2, head_dim/2, hidden)``, swap axes 1
    and 2, and view it back as ``(n * head_dim, hidden)``, with ``n`` the number of heads
    of that projection: ``num_attention_heads`` for ``q_proj``, ``num_key_value_heads``
    for ``k_proj`` (grouped-query attention; not the group size). ``v_proj`` is not
    rotated and not permuted. This is ``permute`` in llama.cpp's ``convert_hf_to_gguf.py``;
    transformers' GGUF loader applies the inverse when it reads ``attn_q``/``attn_k``.
    Without it the file still loads, and every attention score is wrong.
    """
    ### BEGIN SOLUTION M5.4
    outside_blocks = {"model.embed_tokens.weight": "token_embd.weight",
                      "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    if name in outside_blocks:
        return outside_blocks[name], tensor
    block, module = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name).groups()
    in_block = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
                "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    heads = {"self_attn.q_proj": config.num_attention_heads,
             "self_attn.k_proj": config.num_key_value_heads}.get(module)
    if heads is not None:  # per head: [first half | second half] rows -> interleaved pairs
        rows, cols = tensor.shape
        per_head = tensor.reshape(heads, 2, rows // heads // 2, cols)
        tensor = per_head.transpose(1, 2).reshape(rows, cols)
    return f"blk.{block}.{in_block[module]}.weight", tensor
    ### END SOLUTION


@dataclass(frozen=True)
class GGUFExport:
    """What :func:`export_gguf` wrote: the file, its size in bytes, how many tensors of
    each GGML type (the embedded model in q8_0: ``{"Q8_0": 37, "F16": 6, "F32": 13}``) and
    the seconds the export took."""

    path: Path
    size_bytes: int
    tensor_types: dict[str, int]
    seconds: float


def export_gguf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path,
                tensor_type: str = "f16", pre_tokenizer: str | None = None,
                progress: bool = True) -> GGUFExport:
    """Write ``model`` (a Llama, LoRA merged) and ``tokenizer`` as one GGUF file at ``path``.

    ``tensor_type``: ``"f32"``, ``"f16"`` or ``"q8_0"``, the type of the 2-D weights.
    As llama.cpp's ``convert_hf_to_gguf.py`` does: norms and other 1-D tensors stay f32;
    a q8_0 weight whose rows are not a whole number of 32-value blocks (the embedded
    model's ``ffn_down``, 688 inputs) falls back to f16; a tied LM head is not written
    (llama.cpp and transformers then use ``token_embd``). Tensor names and the Q/K
    permutation come from :func:`gguf_tensor`.

    Metadata (architecture ``llama``): context and embedding length, block count,
    feed-forward length, head counts, key/value length when ``head_dim`` is not
    ``hidden / heads``, RoPE dimension count and base, RMS-norm epsilon, vocabulary size,
    file type; the tokenizer as byte-level BPE (``tokenizer.ggml.model = "gpt2"``): tokens
    in id order as the tokenizer spells them, token types (added special tokens CONTROL,
    other added tokens USER_DEFINED), merges, BOS/EOS/padding/unknown ids where the
    tokenizer (or, for BOS, EOS and padding, the model config) has them, whether BOS/EOS
    are added to a plain encoding; and the chat template. The template's
    ``{% generation %}`` markers are removed: they only mark assistant tokens for
    training masks in transformers, and renderers without that extension would reject
    the template; the rendered text is the same.

    ``pre_tokenizer`` is llama.cpp's name for how text is split before BPE
    (``tokenizer.ggml.pre``). Left None, it is detected: a ``ByteLevel`` pre-tokenizer
    with GPT-2's split regex (the embedded tokenizer) is ``"gpt-2"``, which llama.cpp and
    transformers' loader both know. Any other pre-tokenizer must be named (llama.cpp's
    converter refuses unknown ones the same way). The file is written to a temporary
    name and renamed, so ``path`` never holds a partial file.

    Raises :class:`ArtifactError` for a non-Llama model, LoRA layers still in the model
    (merge first), missing or extra parameters (biases, quantized layers), RoPE scaling,
    a tokenizer that is not byte-level BPE, or one larger than the model's vocabulary.
    """
    path = Path(path)
    start = time.perf_counter()
    if tensor_type not in TENSOR_TYPES:
        raise ArtifactError(f"tensor_type {tensor_type!r}: use one of {sorted(TENSOR_TYPES)}")
    config = model.config
    parameters = _llama_parameters(model)
    tokens, merges, pre = _bpe_vocabulary(tokenizer, config.vocab_size, pre_tokenizer)

    writer = gguf.GGUFWriter(None, "llama")
    writer.add_name(path.stem)
    _add_architecture(writer, config, tensor_type)
    _add_tokenizer(writer, tokenizer, config, tokens, merges, pre)
    counts: Counter[str] = Counter()
    seen: dict[str, str] = {}
    for hf_name, weight in progress_bar(parameters.items(), desc="GGUF tensors",
                                        disable=not progress):
        name, weight = gguf_tensor(hf_name, weight.detach().float().cpu(), config)
        if name in seen:
            raise ArtifactError(f"{hf_name} and {seen[name]} both map to the GGUF tensor "
                                f"{name!r}; check the names gguf_tensor returns (M5.4)")
        seen[name] = hf_name
        data, qtype = _encode(name, weight.numpy(), tensor_type)
        writer.add_tensor(name, data, raw_dtype=qtype)
        counts[qtype.name] += 1

    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer.write_header_to_file(partial)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return GGUFExport(path, path.stat().st_size, dict(counts), time.perf_counter() - start)


def _llama_parameters(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The parameters to write, by Hugging Face name, after checking the model is a plain
    Llama: no LoRA layers, no biases, no quantized layers, default RoPE. A tied
    ``lm_head.weight`` is left out."""
    config = model.config
    if config.model_type != "llama":
        raise ArtifactError(f"model type {config.model_type!r}: GGUF export supports Llama "
                            "models only (model_type 'llama')")
    if adapters := lora_layers(model):
        raise ArtifactError(f"the model still has {len(adapters)} LoRA layers (e.g. "
                            f"{next(iter(adapters))}); merge them first (ftlab.lora.merge_lora), "
                            "then export the merged model")
    rope = getattr(config, "rope_parameters", None) or {"rope_type": "default"}
    if rope.get("rope_type", "default") != "default":
        raise ArtifactError(f"RoPE type {rope['rope_type']!r}: this exporter writes the "
                            "default RoPE only; use llama.cpp's convert_hf_to_gguf.py")
    parameters = dict(model.named_parameters(remove_duplicate=False))
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if tied:
        del parameters["lm_head.weight"]
    expected = ({"model.embed_tokens.weight", "model.norm.weight"}
                | ({"lm_head.weight"} if not tied else set())
                | {f"model.layers.{i}.{p}.weight" for i in range(config.num_hidden_layers)
                   for p in _BLOCK_PARAMETERS})
    missing, extra = sorted(expected - parameters.keys()), sorted(parameters.keys() - expected)
    if missing or extra:
        raise ArtifactError(f"not a plain Llama state: missing {missing[:3]}, unexpected "
                            f"{extra[:3]} ({len(missing)} missing, {len(extra)} unexpected); "
                            "biases are not supported, and quantized layers must be merged "
                            "into a float model first")
    return parameters


def _bpe_vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int,
                    pre_tokenizer: str | None) -> tuple[list[tuple[str, gguf.TokenType]],
                                                        list[str], str]:
    """(:func:`_tokens_in_id_order`, merges as ``"a b"``, llama.cpp pre-tokenizer name) of a
    byte-level BPE tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    if spec.get("model", {}).get("type") != "BPE":
        raise ArtifactError(f"{type(tokenizer).__name__}: GGUF export writes byte-level BPE "
                            "tokenizers (tokenizer.json with a BPE model) only")
    pre = spec.get("pre_tokenizer") or {}
    if pre_tokenizer is None:
        if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
            raise ArtifactError(f"pre-tokenizer {json.dumps(pre)[:120]} is not GPT-2's; "
                                "pass pre_tokenizer= with llama.cpp's name for it "
                                "(e.g. 'llama-bpe', 'qwen2', 'smollm')")
        pre_tokenizer = "gpt-2"
    if len(tokenizer) > vocab_size:
        raise ArtifactError(f"the tokenizer has {len(tokenizer)} tokens but the model's "
                            f"vocabulary is {vocab_size}: export the tokenizer the model was "
                            "trained with")
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return _tokens_in_id_order(tokenizer, vocab_size), merges, pre_tokenizer


def _tokens_in_id_order(tokenizer: PreTrainedTokenizerBase,
                       vocab_size: int) -> list[tuple[str, gguf.TokenType]]:
    """(token, GGUF token type) for ids ``0 .. vocab_size - 1``: added special tokens are
    CONTROL, other added tokens USER_DEFINED, the rest NORMAL; ids the tokenizer does not
    have (a model vocabulary padded past the tokenizer) are ``[PAD<id>]``, UNUSED."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    out = []
    for i in range(vocab_size):
        if i not in by_id:
            out.append((f"[PAD{i}]", gguf.TokenType.UNUSED))
        elif i in added:
            out.append((by_id[i], gguf.TokenType.CONTROL if added[i].special
                        else gguf.TokenType.USER_DEFINED))
        else:
            out.append((by_id[i], gguf.TokenType.NORMAL))
    return out


def _add_architecture(writer: gguf.GGUFWriter, config: PretrainedConfig,
                      tensor_type: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 1e4))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(TENSOR_TYPES[tensor_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _first_id(*candidates: int | list[int] | None) -> int | None:
    for value in candidates:
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return None


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase,
                   config: PretrainedConfig, tokens: list[tuple[str, gguf.TokenType]],
                   merges: list[str], pre: str) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list([token for token, _ in tokens])
    writer.add_token_types([kind for _, kind in tokens])
    writer.add_token_merges(merges)
    eos = _first_id(tokenizer.eos_token_id, config.eos_token_id)
    if eos is None:
        raise ArtifactError("the tokenizer has no EOS token and the config no eos_token_id: "
                            "a chat model needs one to stop; set tokenizer.eos_token")
    writer.add_eos_token_id(eos)
    for add, value in ((writer.add_bos_token_id, _first_id(tokenizer.bos_token_id,
                                                           config.bos_token_id)),
                       (writer.add_pad_token_id, _first_id(tokenizer.pad_token_id,
                                                           config.pad_token_id)),
                       (writer.add_unk_token_id, tokenizer.unk_token_id)):
        if value is not None:
            add(value)
    plain = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a").input_ids
    writer.add_add_bos_token(len(full) > len(plain) and full[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(full) > len(plain) and full[-1] == tokenizer.eos_token_id)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(_GENERATION_TAG.sub("", tokenizer.chat_template))


def _encode(name: str, array: np.ndarray,
            tensor_type: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """``array`` in the GGML type llama.cpp's converter gives tensor ``name``."""
    kind = gguf.GGMLQuantizationType
    qtype = kind.F32 if array.ndim <= 1 or name.endswith("_norm.weight") else _QTYPE[tensor_type]
    try:
        return gguf.quants.quantize(array, qtype), qtype
    except gguf.QuantError:  # rows not a whole number of blocks: llama.cpp falls back to F16
        return gguf.quants.quantize(array, kind.F16), kind.F16


@dataclass
class GGUFCheck:
    """The outcome of :func:`verify_gguf`.

    ``max_logit_diff``: the largest ``|logit_gguf - logit_reference|`` over every position
    of every prompt. ``generations_equal``: the greedy continuations (token ids) are
    identical; the decoded texts are in ``reference_generations`` / ``gguf_generations``.
    ``tokenizer_ids_equal``: the tokenizer rebuilt from the file encodes every prompt to
    the same ids as the reference tokenizer; ``tokenizer_round_trip``: it decodes those
    ids back to the prompt; ``chat_template_equal``: its chat template renders a short
    conversation to the same text.
    """

    max_logit_diff: float
    generations_equal: bool
    tokenizer_ids_equal: bool
    tokenizer_round_trip: bool
    chat_template_equal: bool
    reference_generations: list[str] = field(default_factory=list)
    gguf_generations: list[str] = field(default_factory=list)


@torch.no_grad()
@contextmanager
def _no_conversion_bar() -> Iterator[None]:
    """Silence transformers' "Converting and de-quantizing GGUF tensors" bar (it ignores
    ``disable_progress_bar``) for a load that takes well under a second here."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def verify_gguf(path: str | Path, reference_model: PreTrainedModel,
                tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                max_new_tokens: int = 16) -> GGUFCheck:
    """Load the GGUF file at ``path`` back with transformers and compare it with
    ``reference_model`` (the model it was exported from) on ``prompts`` (rendered text).

    The model is loaded with ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)``
    (weights dequantized to float32, Q/K permutation undone) and the tokenizer with
    ``AutoTokenizer.from_pretrained(folder, gguf_file=name)``, which rebuilds a
    byte-level BPE tokenizer from the file's tokens, merges and CONTROL tokens. Each
    prompt is encoded with the reference ``tokenizer`` (no special tokens added) and run
    through both models one at a time: logits of every position are compared, and greedy
    generation (``max_new_tokens``, stopping at the tokenizer's EOS, ``<|im_end|>`` for the
    embedded model) must give the same ids. The rebuilt tokenizer is compared on the same
    prompts and on the chat template. It is not identical to the original in every
    attribute: it is built like GPT-2's byte-level BPE, its ``bos_token`` is the file's
    BOS id (``<|endoftext|>`` for the embedded model, taken from the model config, where
    our tokenizer has none) and it adds no BOS, so encodings are the same. Raises
    :class:`ArtifactError` if the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such GGUF file; write it with export_gguf first")
    with _no_conversion_bar():
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                      dtype=torch.float32).eval()
    rebuilt = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    reference_model.eval()
    stop = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                do_sample=False, max_new_tokens=max_new_tokens)
    diff, same, ours, theirs = 0.0, True, [], []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False).input_ids])
        mask = torch.ones_like(ids)
        want = reference_model(input_ids=ids, attention_mask=mask).logits.float()
        got = loaded(input_ids=ids, attention_mask=mask).logits.float()
        diff = max(diff, (got - want).abs().max().item())
        a = reference_model.generate(input_ids=ids, attention_mask=mask, **stop)[0, ids.shape[1]:]
        b = loaded.generate(input_ids=ids, attention_mask=mask, **stop)[0, ids.shape[1]:]
        same = same and a.tolist() == b.tolist()
        ours.append(tokenizer.decode(a))
        theirs.append(tokenizer.decode(b))
    encoded = [rebuilt(p, add_special_tokens=False).input_ids for p in prompts]
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    return GGUFCheck(
        max_logit_diff=diff,
        generations_equal=same,
        tokenizer_ids_equal=encoded == [tokenizer(p, add_special_tokens=False).input_ids
                                        for p in prompts],
        tokenizer_round_trip=[rebuilt.decode(e) for e in encoded] == list(prompts),
        chat_template_equal=(rebuilt.apply_chat_template(conversation, tokenize=False)
                             == tokenizer.apply_chat_template(conversation, tokenize=False)),
        reference_generations=ours, gguf_generations=theirs)
