"""M1.1 — one raw record of any supported format to a canonical conversation."""

from __future__ import annotations

from ftlab.data.formats import SHAREGPT_ROLES

ALPACA_SEPARATOR = "\n\n"
"""Between an alpaca ``instruction`` and its non-blank ``input`` in the user turn."""


def to_conversation(record: dict, fmt: str) -> list[dict]:
    """Convert a valid record of format ``fmt`` to a conversation.

    Input: a record that passed :func:`ftlab.data.formats.check_fields` for ``fmt``.
    Output: a new list of ``{"role": str, "content": str}`` dicts (no other keys):

    * alpaca: ``[system]`` when ``system`` is not blank, then user = ``instruction``, or
      ``instruction + ALPACA_SEPARATOR + input`` when ``input`` is not blank (the
      instruction comes first), then assistant = ``output``. *Blank* means missing,
      ``None``, empty or white space only (``" "``, ``"\\n"``): a blank ``input`` or
      ``system`` is absent, as if the field were not there;
    * prompt_completion: user = ``prompt``, assistant = ``completion``;
    * question_answer: user = ``question``, assistant = ``answer``;
    * messages: every turn, in order, system turns included (a multi-turn record keeps
      every exchange);
    * sharegpt: every turn, in order, ``from`` mapped through ``SHAREGPT_ROLES`` (human or
      user -> user, gpt or assistant -> assistant, system -> system), ``value`` as content.

    Contents that are kept are copied verbatim in every format (no stripping: an ``input``
    of ``" 2 3\\n"`` is appended as it is, a reply ``" 5\\n"`` stays ``" 5\\n"``). The record
    is not modified, neither by the call nor through the result: the returned dicts are new
    ones, so editing them leaves the record alone.
    """
    ### BEGIN SOLUTION M1.1
    if fmt == "messages":
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if fmt == "sharegpt":
        return [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]}
                for t in record["conversations"]]
    if fmt == "alpaca":
        user, extra = record["instruction"], record.get("input") or ""
        if extra.strip():
            user = user + ALPACA_SEPARATOR + extra
        system = record.get("system") or ""
        head = [{"role": "system", "content": system}] if system.strip() else []
        return head + [{"role": "user", "content": user},
                       {"role": "assistant", "content": record["output"]}]
    prompt, response = {"prompt_completion": ("prompt", "completion"),
                        "question_answer": ("question", "answer")}[fmt]
    return [{"role": "user", "content": record[prompt]},
            {"role": "assistant", "content": record[response]}]
    ### END SOLUTION
