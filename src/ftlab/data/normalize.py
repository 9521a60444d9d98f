"""M1.1 — one raw record of any supported format to a canonical conversation."""

from __future__ import annotations

from ftlab.data.formats import SHAREGPT_ROLES

ALPACA_SEPARATOR = "\n\n"
"""Between an alpaca ``instruction`` and its non-empty ``input`` in the user turn."""


def to_conversation(record: dict, fmt: str) -> list[dict]:
    """Convert a valid record of format ``fmt`` to a conversation.

    Input: a record that passed :func:`ftlab.data.formats.check_fields` for ``fmt``.
    Output: a new list of ``{"role": str, "content": str}`` dicts (no other keys):

    * alpaca: ``[system]`` when ``system`` is a non-empty string, then user =
      ``instruction``, or ``instruction + ALPACA_SEPARATOR + input`` when ``input`` is
      non-empty (the instruction comes first), then assistant = ``output``;
    * prompt_completion: user = ``prompt``, assistant = ``completion``;
    * question_answer: user = ``question``, assistant = ``answer``;
    * messages: every turn, in order, system turns included;
    * sharegpt: every turn, ``from`` mapped through ``SHAREGPT_ROLES`` (human -> user,
      gpt -> assistant, system -> system), ``value`` as content.

    Contents are copied verbatim (no stripping). The record is not modified.
    """
    ### BEGIN SOLUTION M1.1
    if fmt == "messages":
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if fmt == "sharegpt":
        return [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]}
                for t in record["conversations"]]
    if fmt == "alpaca":
        user = record["instruction"]
        if record.get("input"):
            user = user + ALPACA_SEPARATOR + record["input"]
        system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        return system + [{"role": "user", "content": user},
                         {"role": "assistant", "content": record["output"]}]
    prompt, response = {"prompt_completion": ("prompt", "completion"),
                        "question_answer": ("question", "answer")}[fmt]
    return [{"role": "user", "content": record[prompt]},
            {"role": "assistant", "content": record[response]}]
    ### END SOLUTION
