"""Milestone 5's export package: getting a fine-tuned model out to other runtimes.

Tasks (solution regions): M5.3 :func:`merge_and_verify` (float32 merge of a copy, into
dequantized weights for 4-bit bases, measured by the max logit difference), M5.4
:func:`gguf_tensor` (llama.cpp tensor names and the Q/K permutation). Given:
:func:`merge_for_export`, :func:`export_hf` / :func:`verify_hf_export` (a transformers folder
with end-of-turn EOS and a model card, loaded back through ``pipeline``), :func:`export_gguf`
(f32/f16/q8_0 GGUF with tokenizer metadata and chat template) and :func:`verify_gguf` (round
trip through transformers' GGUF loader).
"""

from ftlab.export.gguf import GGUFCheck, GGUFExport, export_gguf, gguf_tensor, verify_gguf
from ftlab.export.hf import ExportCheck, export_hf, model_card, verify_hf_export
from ftlab.export.merge import MergeResult, merge_and_verify, merge_for_export

__all__ = ["ExportCheck", "GGUFCheck", "GGUFExport", "MergeResult", "export_gguf", "export_hf",
           "gguf_tensor", "merge_and_verify", "merge_for_export", "model_card", "verify_gguf",
           "verify_hf_export"]
