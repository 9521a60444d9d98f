"""The label inspector: every token of an example with whether it is trained (given)."""

from __future__ import annotations

import html

from transformers import PreTrainedTokenizerBase

from ftlab.data.labels import IGNORE_INDEX

TRAINED_STYLE = "background:#c8f7c5;color:#0b3d0b"
MASKED_STYLE = "color:#888"


def _pieces(example: dict[str, list[int]], tokenizer: PreTrainedTokenizerBase
            ) -> list[tuple[str, bool]]:
    return [(tokenizer.decode([i]), label != IGNORE_INDEX)
            for i, label in zip(example["input_ids"], example["labels"])]


def inspect_text(example: dict[str, list[int]], tokenizer: PreTrainedTokenizerBase) -> str:
    """One line per token: position, id, ``TRAIN`` or ``-``, and the token text (repr)."""
    lines = [f"{'pos':>4} {'id':>6}  {'trained':<7} token"]
    for pos, ((text, trained), tok_id) in enumerate(zip(_pieces(example, tokenizer),
                                                        example["input_ids"])):
        lines.append(f"{pos:>4} {tok_id:>6}  {'TRAIN' if trained else '-':<7} {text!r}")
    n = sum(label != IGNORE_INDEX for label in example["labels"])
    lines.append(f"{n} of {len(example['labels'])} tokens trained")
    return "\n".join(lines)


def inspect_html(example: dict[str, list[int]], tokenizer: PreTrainedTokenizerBase) -> str:
    """The example as HTML: trained tokens highlighted green, masked tokens grey.

    In a notebook: ``IPython.display.HTML(inspect_html(example, tokenizer))``.
    """
    spans = []
    for text, trained in _pieces(example, tokenizer):
        style = TRAINED_STYLE if trained else MASKED_STYLE
        shown = html.escape(text).replace("\n", "↵<br>")
        spans.append(f'<span style="{style};border:1px solid #ddd" title="'
                     f'{"trained" if trained else "masked"}">{shown}</span>')
    return ('<div style="font-family:monospace;line-height:1.8">' + "".join(spans) + "</div>")
