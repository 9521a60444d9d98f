"""``ftlab demo``: meet the embedded base model (the main job until the capstone exists).

Loads the committed model offline, completes held-out facts in plain form (pretraining
taught them), asks the same facts in chat form (nothing taught it to answer yet), and
measures perplexity on held-out corpus text.
"""

from __future__ import annotations

import time

from ftlab.models.build import eval_items, measure_validation_loss
from ftlab.models.load import load_base_model
from ftlab.models.measure import (chat_prompt, chat_reply, first_sentence, greedy_complete,
                                  perplexity, plain_prompt)
from ftlab.models.provenance import read_provenance
from ftlab.models.tokenizer import IM_END
from ftlab.paths import base_model_dir, data_dir
from ftlab.world import check_answer

PER_KIND = 1
"""Examples shown per fact kind."""


def _pick(items: list, per_kind: int) -> list:
    seen: dict[str, int] = {}
    picked = []
    for fact, text in items:
        if seen.get(fact.kind, 0) < per_kind:
            seen[fact.kind] = seen.get(fact.kind, 0) + 1
            picked.append((fact, text))
    return picked


def _mark(ok: bool) -> str:
    return "right" if ok else "wrong"


def run_demo(print_fn=print) -> dict:
    """Print the demo; return the numbers shown (perplexity and per-example correctness)."""
    start = time.perf_counter()
    model, tok = load_base_model()
    prov = read_provenance(base_model_dir())
    items = eval_items(data_dir())
    print_fn(f"ftlab demo: the embedded base model, {prov['parameters'] / 1e6:.2f}M parameters "
             f"(Llama, grouped-query attention), pretrained on the synthetic world.\n")

    cloze = _pick(items["cloze_heldout"], PER_KIND)
    outs = greedy_complete(model, tok, [plain_prompt(p) for _, p in cloze], max_new_tokens=8)
    print_fn("Plain completion of facts held out of SFT (pretraining taught these):")
    cloze_ok = []
    for (fact, prompt), out in zip(cloze, outs):
        said = first_sentence(out)
        cloze_ok.append(check_answer(fact, said))
        print_fn(f"  {prompt} ->{said!s}   [{_mark(cloze_ok[-1])}, expected {fact.answer}]")

    chat = _pick(items["chat_heldout"], PER_KIND)
    outs = greedy_complete(model, tok, [chat_prompt(tok, q) for _, q in chat], max_new_tokens=24)
    print_fn("\nThe same kind of facts asked in chat form (no fine-tuning yet):")
    chat_ok = []
    for (fact, question), out in zip(chat, outs):
        reply = chat_reply(out).strip()
        chat_ok.append(check_answer(fact, reply))
        print_fn(f"  user:  {question}\n  model: {reply!r}   [{_mark(chat_ok[-1])}, "
                 f"{'stopped' if IM_END in out else 'did not stop'} at end of turn]")

    loss = measure_validation_loss(model, tok, data_dir(), prov["recipe"]["seq_len"])
    print_fn(f"\nPerplexity on held-out corpus text: {perplexity(loss):.3f} "
             f"(recorded at build: {prov['validation_perplexity']:.3f})")
    print_fn(f"Recorded at build over all held-out facts: cloze accuracy "
             f"{prov['cloze_accuracy_heldout']:.0%}, chat exact match "
             f"{prov['chat_exact_match_heldout']:.0%}. Fine-tuning (the course) closes that gap.")
    print_fn(f"Done in {time.perf_counter() - start:.1f} s. Next: open notebooks/ in JupyterLab.")
    return {"perplexity": perplexity(loss), "cloze_correct": cloze_ok, "chat_correct": chat_ok}
