"""Milestone 1 — data preparation: files → conversations → chat text → ids + labels → batches.

Tasks (solution regions): M1.1 :func:`to_conversation`, M1.2 :func:`render`,
M1.3 :func:`tokenize_with_labels`, M1.4 :func:`quality_filter`,
M1.5 :func:`train_val_split`, M1.6 :func:`collate`. The rest is given: loading with
per-record accounting, format detection, the label inspector, and :func:`prepare_sft`
(load → filter → split → tokenize in one call).
"""

from ftlab.data.chat import render
from ftlab.data.collate import collate
from ftlab.data.dataset import Example, load_conversations
from ftlab.data.formats import FORMATS, detect_format
from ftlab.data.inspector import inspect_html, inspect_text
from ftlab.data.labels import IGNORE_INDEX, tokenize_with_labels
from ftlab.data.normalize import to_conversation
from ftlab.data.prepare import PreparedData, prepare_sft
from ftlab.data.quality import FilterReport, quality_filter
from ftlab.data.split import train_val_split

__all__ = [
    "FORMATS", "IGNORE_INDEX", "Example", "FilterReport", "PreparedData", "prepare_sft", "collate", "detect_format",
    "inspect_html", "inspect_text", "load_conversations", "quality_filter", "render",
    "to_conversation", "tokenize_with_labels", "train_val_split",
]
