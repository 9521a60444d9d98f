"""GGUF export as a user relies on it: the embedded model written as f32/f16/q8_0 loads back
with transformers' GGUF loader and gives the same logits (within the type's rounding) and the
same greedy chat generations; the tokenizer rebuilt from the file encodes like ours; tensor
names and types are llama.cpp's; a file without the Q/K permutation loads but is wrong; LoRA
and non-Llama models are refused."""

from __future__ import annotations

import copy

import gguf
import pytest
import torch

import ftlab.export.gguf as gguf_module
from ftlab.errors import ArtifactError
from ftlab.export import export_gguf, verify_gguf
from ftlab.lora import find_target_modules, inject_lora
from ftlab.models.measure import chat_prompt
from ftlab.models.tiny import tiny_model

QUESTIONS = ("What is the capital of France?", "How many legs does a spider have?",
             "What day comes after Monday?")
Q8_0_MEASURED = 0.098
"""Max logit difference of the q8_0 export of the embedded model (measured, 3 prompts)."""


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [chat_prompt(tokenizer, q) for q in QUESTIONS]


@pytest.fixture(scope="module")
def exported(base_model, tmp_path_factory):
    """tensor_type -> GGUFExport of the embedded model."""
    model, tokenizer = base_model
    folder = tmp_path_factory.mktemp("gguf")
    return {t: export_gguf(model, tokenizer, folder / f"base-{t}.gguf", t, progress=False)
            for t in ("f32", "f16", "q8_0")}


def _reader(written):
    return gguf.GGUFReader(written.path)


def test_f16_round_trip_equals_the_model(base_model, exported, prompts):
    model, tokenizer = base_model
    check = verify_gguf(exported["f16"].path, model, tokenizer, prompts)
    assert check.max_logit_diff <= 1e-2, f"f16 logits differ by {check.max_logit_diff}"
    assert check.generations_equal, (
        f"greedy generations differ:\n{check.reference_generations}\n{check.gguf_generations}")
    assert check.tokenizer_ids_equal and check.tokenizer_round_trip, \
        "the tokenizer rebuilt from the file encodes or decodes the prompts differently"
    assert check.chat_template_equal, "the file's chat template renders differently"
    assert not list(exported["f16"].path.parent.glob("*.partial")), "a partial file was left"


def test_f32_round_trip_is_exact(base_model, exported, prompts):
    model, tokenizer = base_model
    check = verify_gguf(exported["f32"].path, model, tokenizer, prompts[:1])
    assert check.max_logit_diff <= 1e-4, f"f32 logits differ by {check.max_logit_diff}"
    assert exported["f32"].tensor_types == {"F32": 56}, exported["f32"].tensor_types


def test_q8_0_round_trip_is_close(base_model, exported, prompts):
    model, tokenizer = base_model
    check = verify_gguf(exported["q8_0"].path, model, tokenizer, prompts)
    assert 0 < check.max_logit_diff <= 3 * Q8_0_MEASURED, (
        f"q8_0 logits differ by {check.max_logit_diff} (measured {Q8_0_MEASURED})")
    sizes = {t: e.size_bytes for t, e in exported.items()}
    assert sizes["q8_0"] < 0.7 * sizes["f16"] and sizes["f16"] < 0.55 * sizes["f32"], sizes


def test_tensor_types_follow_llama_cpp(exported):
    """Norms stay F32; q8_0 rows of 688 values (ffn_down) are not whole 32-blocks: F16."""
    types = {t.name: t.tensor_type.name for t in _reader(exported["q8_0"]).tensors}
    assert {n for n, t in types.items() if t == "F32"} == {
        n for n in types if n.endswith("_norm.weight")}, types
    assert {n for n, t in types.items() if t == "F16"} == {
        f"blk.{i}.ffn_down.weight" for i in range(6)}, types
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "Q8_0"
    assert exported["q8_0"].tensor_types == {"Q8_0": 37, "F16": 6, "F32": 13}
    f16 = {t.name: t.tensor_type.name for t in _reader(exported["f16"]).tensors}
    assert {n for n, t in f16.items() if t == "F32"} == {n for n in f16 if "norm" in n}


def test_tensor_names_are_llama_cpp_names(base_model, exported):
    model, _ = base_model
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    want = {table.get_name(n, try_suffixes=(".weight",)) for n, _ in model.named_parameters()}
    names = {t.name for t in _reader(exported["f16"]).tensors}
    assert names == want, f"extra {sorted(names - want)[:4]}, missing {sorted(want - names)[:4]}"
    assert "output.weight" not in names, "a tied LM head must not be written"


def test_metadata(exported):
    fields = _reader(exported["f16"]).fields
    value = {k: f.contents() for k, f in fields.items() if not k.startswith("tokenizer.ggml.t")}
    assert value["general.architecture"] == "llama"
    assert value["llama.block_count"] == 6 and value["llama.embedding_length"] == 256
    assert value["llama.attention.head_count"] == 8 and value["llama.attention.head_count_kv"] == 2
    assert value["llama.feed_forward_length"] == 688 and value["llama.context_length"] == 512
    assert value["llama.rope.dimension_count"] == 32 and value["llama.rope.freq_base"] == 1e4
    assert value["llama.vocab_size"] == 1658 and value["general.file_type"] == 1
    assert value["tokenizer.ggml.model"] == "gpt2" and value["tokenizer.ggml.pre"] == "gpt-2"
    assert value["tokenizer.ggml.eos_token_id"] == 2, "EOS must be <|im_end|>"
    assert value["tokenizer.ggml.padding_token_id"] == 3
    assert value["tokenizer.ggml.bos_token_id"] == 0
    assert value["tokenizer.ggml.add_bos_token"] is False
    assert "{%- generation" not in value["tokenizer.chat_template"], "transformers-only tag"
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    assert tokens[:4] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    assert types[:4] == [3, 3, 3, 3] and set(types[4:]) == {1}, "specials are CONTROL"
    assert len(tokens) == 1658 and "tokenizer.ggml.unknown_token_id" not in fields


def test_gguf_tokenizer_encodes_like_ours(exported, tokenizer):
    from transformers import AutoTokenizer

    path = exported["f16"].path
    rebuilt = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = ["<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n<|im_start|>assistant\n",
             "<|endoftext|>Paris is the capital of France.<|im_end|><|pad|>",
             "  two  spaces, tabs\tand\nnew lines ",
             "café, naïve, 日本, emoji 🙂"]
    for text in texts:
        ours = tokenizer(text, add_special_tokens=False).input_ids
        theirs = rebuilt(text, add_special_tokens=False).input_ids
        assert theirs == ours, f"{text!r}: {theirs} != {ours}"
        assert rebuilt.decode(theirs) == text
    assert (rebuilt.eos_token, rebuilt.pad_token) == ("<|im_end|>", "<|pad|>")
    assert rebuilt("Hi").input_ids == tokenizer("Hi").input_ids, "no BOS may be added"


def test_unpermuted_qk_loads_but_is_wrong(base_model, prompts, tmp_path, monkeypatch):
    """The wrong answer the course must catch: names right, Q/K rows as Hugging Face has them."""
    model, tokenizer = base_model
    right = gguf_module.gguf_tensor
    monkeypatch.setattr(gguf_module, "gguf_tensor",
                        lambda name, tensor, config: (right(name, tensor, config)[0], tensor))
    written = export_gguf(model, tokenizer, tmp_path / "unpermuted.gguf", "f16", progress=False)
    check = verify_gguf(written.path, model, tokenizer, prompts)
    assert check.max_logit_diff > 1, f"unpermuted Q/K gave logit diff {check.max_logit_diff}"


def test_untied_head_is_written_as_output(base_model, prompts, tmp_path):
    model, tokenizer = base_model
    untied = copy.deepcopy(model)
    untied.config.tie_word_embeddings = False
    torch.manual_seed(0)
    head = model.lm_head.weight.detach() + 0.01 * torch.randn_like(model.lm_head.weight)
    untied.lm_head.weight = torch.nn.Parameter(head)
    written = export_gguf(untied, tokenizer, tmp_path / "untied.gguf", "f32", progress=False)
    assert "output.weight" in {t.name for t in gguf.GGUFReader(written.path).tensors}
    check = verify_gguf(written.path, untied, tokenizer, prompts[:1])
    assert check.max_logit_diff <= 1e-4, check.max_logit_diff


def test_lora_model_is_refused(tokenizer, tmp_path):
    model = tiny_model("llama")
    inject_lora(model, find_target_modules(model), r=2, alpha=4)
    with pytest.raises(ArtifactError, match="merge them first"):
        export_gguf(model, tokenizer, tmp_path / "lora.gguf", progress=False)
    assert not list(tmp_path.iterdir()), "nothing may be written for a refused model"


def test_bad_inputs_are_refused(base_model, tmp_path):
    model, tokenizer = base_model
    with pytest.raises(ArtifactError, match="Llama models only"):
        export_gguf(tiny_model("qwen2"), tokenizer, tmp_path / "q.gguf", progress=False)
    with pytest.raises(ArtifactError, match="tensor_type 'q4_k'"):
        export_gguf(model, tokenizer, tmp_path / "m.gguf", "q4_k", progress=False)
    with pytest.raises(ArtifactError, match="no such GGUF file"):
        verify_gguf(tmp_path / "absent.gguf", model, tokenizer, ["hi"])
