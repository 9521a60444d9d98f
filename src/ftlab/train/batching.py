"""Micro-batches for training (given): seeded order, length grouping, packing, resumable.

:class:`BatchLoader` walks tokenized examples (``{"input_ids", "labels"}`` lists, as
:func:`ftlab.data.tokenize_with_labels` makes them) epoch after epoch. The order of epoch
``e`` depends only on ``(seed, e)``, never on a global RNG, so the data position
``(epoch, position)`` is all a checkpoint needs to continue with the same next batch.
With several data-parallel processes, the plan is the same global one on every process and
each takes its share of every micro-batch (:func:`ftlab.train.distributed.rank_share`), so
the data position means the same whatever the number of processes.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from ftlab.data.collate import collate
from ftlab.data.labels import IGNORE_INDEX
from ftlab.errors import ConfigError
from ftlab.train.distributed import rank_share

MEGABATCH = 50
"""Length grouping sorts windows of at most ``MEGABATCH x batch_size`` shuffled examples."""


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens in a batch from :func:`ftlab.data.collate` or :func:`pack` (its
    ``real_tokens`` count when it carries one)."""
    if "real_tokens" in batch:
        return int(batch["real_tokens"])
    return int(batch["attention_mask"].sum())


def pack_rows(examples: list[dict[str, list[int]]], max_length: int) -> list[list[int]]:
    """Greedy packing, in order: indices of the examples sharing each row of at most
    ``max_length`` tokens (an example is never split; one longer than ``max_length`` gets a
    row of its own)."""
    rows: list[list[int]] = []
    used = max_length
    for i, example in enumerate(examples):
        n = len(example["input_ids"])
        if used + n > max_length:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def pack(rows: list[list[dict[str, list[int]]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate the examples of each row into one sequence, rows right-padded to the
    longest.

    Output (LongTensors, shape (rows, longest row)): ``input_ids``; ``labels`` with each
    example's first label set to ``IGNORE_INDEX`` (it would be predicted from the previous
    example's last token) and padding ignored; ``position_ids`` restarting at 0 for each
    example and for the padding, so transformers' models build a block-diagonal causal mask
    and no example attends to another. No ``attention_mask`` (its absence is what makes
    transformers read ``position_ids`` as packing); ``real_tokens``: non-padding count.
    """
    width = max(sum(len(e["input_ids"]) for e in row) for row in rows)
    ids, labels, positions = [], [], []
    for row in rows:
        r_ids, r_labels, r_pos = [], [], []
        for e in row:
            r_ids += e["input_ids"]
            r_labels += [IGNORE_INDEX] + e["labels"][1:]
            r_pos += list(range(len(e["input_ids"])))
        pad = width - len(r_ids)
        ids.append(r_ids + [pad_id] * pad)
        labels.append(r_labels + [IGNORE_INDEX] * pad)
        positions.append(r_pos + list(range(pad)))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "position_ids": torch.tensor(positions),
            "real_tokens": torch.tensor(sum(len(e["input_ids"]) for row in rows for e in row))}


class BatchLoader:
    """Endless, resumable micro-batches over ``examples``.

    Each epoch shuffles the examples with ``random.Random(f"{seed}:{epoch}")``. With
    ``group_by_length``, windows of ``min(MEGABATCH, n // (4 * batch_size)) * batch_size``
    shuffled examples (at least one batch; transformers' rule) are sorted by length and cut
    into batches, and the batches are shuffled again: a batch holds examples of similar length
    (less padding), and on small data the windows stay small enough that batches differ from
    epoch to epoch. With
    ``packing``, the shuffled examples are packed into rows of ``max_length`` tokens
    (:func:`pack`) and ``batch_size`` counts rows. ``state_dict()`` is ``{"epoch",
    "position"}``: the next batch is batch ``position`` of epoch ``epoch``.

    ``rank`` / ``world_size``: this process's place among data-parallel processes;
    ``batch_size`` is then the micro-batch over all of them (a multiple of ``world_size``)
    and :meth:`next` returns this process's share of it.
    """

    def __init__(self, examples: list[dict[str, list[int]]], batch_size: int, pad_id: int,
                 seed: int = 0, group_by_length: bool = True, packing: bool = False,
                 max_length: int | None = None,
                 collate_fn: Callable[[list[dict], int], dict[str, torch.Tensor]] = collate,
                 rank: int = 0, world_size: int = 1) -> None:
        if not examples:
            raise ValueError("no training examples")
        if batch_size % world_size:
            raise ConfigError(
                f"train.batch_size: {batch_size} examples per micro-batch cannot be shared by "
                f"{world_size} processes; use a multiple of {world_size} (each process takes "
                "batch_size / processes)")
        if packing and max_length is None:
            raise ValueError("packing needs max_length")
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.seed, self.group_by_length = seed, group_by_length
        self.packing, self.max_length = packing, max_length
        self.collate_fn = collate_fn
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self.last_sources: dict[str, int] = {}
        self._plan_epoch, self._plan = -1, []
        self._length = len(self.plan(0))  # the same for every epoch

    def plan(self, epoch: int) -> list[list[list[int]]]:
        """Epoch ``epoch`` as micro-batches, each a list of rows, each a list of example
        indices (one index per row unless packing)."""
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(range(len(self.examples)))
        rng.shuffle(order)
        size = lambda i: len(self.examples[i]["input_ids"])  # noqa: E731
        if self.packing:
            rows = [[order[j] for j in row]
                    for row in pack_rows([self.examples[i] for i in order], self.max_length)]
        else:
            if self.group_by_length:
                window = self.batch_size * max(1, min(
                    MEGABATCH, len(order) // (4 * self.batch_size)))
                order = [i for s in range(0, len(order), window)
                         for i in sorted(order[s:s + window], key=size, reverse=True)]
            rows = [[i] for i in order]
        batches = [rows[s:s + self.batch_size] for s in range(0, len(rows), self.batch_size)]
        if self.group_by_length and not self.packing:
            rng.shuffle(batches)
        return batches

    def __len__(self) -> int:
        """Micro-batches per epoch."""
        return self._length

    def collate(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """The tensors of one planned micro-batch."""
        if self.packing:
            return pack([[self.examples[i] for i in row] for row in rows], self.pad_id)
        return self.collate_fn([self.examples[row[0]] for row in rows], self.pad_id)

    def next(self) -> dict[str, torch.Tensor]:
        """The next micro-batch (this process's share of it); moves to the next epoch after
        the last one.

        ``last_sources`` then holds, for the examples of the whole micro-batch (all
        processes) that carry a ``source`` (e.g. general-text replay), their trained-token
        counts by source (labels after the first, as
        :func:`~ftlab.train.step.count_targets` counts them). A process left without a row
        (a micro-batch with fewer rows than processes) gets a placeholder row with every
        label ignored and ``real_tokens`` 0: it runs forward and backward and trains
        nothing."""
        if self._plan_epoch != self.epoch:
            self._plan_epoch, self._plan = self.epoch, self.plan(self.epoch)
        rows = self._plan[self.position]
        self.last_sources = {}
        for i in (i for row in rows for i in row):
            source = self.examples[i].get("source")
            if source is not None:
                targets = sum(label != -100 for label in self.examples[i]["labels"][1:])
                self.last_sources[source] = self.last_sources.get(source, 0) + targets
        share, placeholder = rank_share(rows, self.rank, self.world_size)
        batch = self.collate(share)
        if placeholder:
            batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
            batch["real_tokens"] = torch.tensor(0)
        self.position += 1
        if self.position == len(self._plan):
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def padding_fraction(self, epoch: int = 0) -> float:
        """Share of padding among all tokens of epoch ``epoch``'s micro-batches."""
        real = total = 0
        for rows in self.plan(epoch):
            batch = self.collate(rows)
            real += real_tokens(batch)
            total += batch["input_ids"].numel()
        return 1 - real / total

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def length_sorted_batches(examples: list[dict], batch_size: int, pad_id: int,
                          collate_fn: Callable[[list[dict], int], dict[str, torch.Tensor]]
                          ) -> list[dict[str, torch.Tensor]]:
    """``examples`` sorted by length and collated ``batch_size`` at a time (little padding):
    how validation data is batched."""
    ordered = sorted(examples, key=lambda e: len(e["input_ids"]))
    return [collate_fn(ordered[i:i + batch_size], pad_id)
            for i in range(0, len(ordered), batch_size)]
