"""M4.5 — early stopping on validation loss, with patience and a minimum improvement."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    """Watches evaluation results and says when to stop.

    ``patience``: evaluations in a row without improvement that stop the run (None: never
    stop, still track the best). ``min_delta``: the validation loss must fall below
    ``best - min_delta`` to count as an improvement. ``best`` is the lowest validation loss
    that counted (``inf`` before the first evaluation), ``bad_evals`` the evaluations since.
    """

    patience: int | None = None
    min_delta: float = 0.0
    best: float = math.inf
    bad_evals: int = 0

    def update(self, metrics: dict[str, float]) -> bool:
        """Record one evaluation; return True when it is the new best.

        ``metrics`` is the evaluation record, e.g. ``{"step": 40, "train_loss": 0.91,
        "val_loss": 1.02}``. Only ``metrics["val_loss"]`` decides: training loss keeps
        falling while the model overfits. An improvement (``val_loss < best - min_delta``)
        sets ``best`` and resets ``bad_evals`` to 0; anything else adds 1 to ``bad_evals``.

        The comparison is strict and against ``best`` (not the previous evaluation):
        ``val_loss == best - min_delta`` is no improvement, so a plateau (equal losses with
        ``min_delta`` 0) counts as bad evaluations. ``min_delta`` is an absolute amount of
        loss, not a fraction. A ``nan`` validation loss is never an improvement: it adds 1
        to ``bad_evals`` and leaves ``best`` as it was. Each call counts as one evaluation,
        whatever ``metrics["step"]`` is.
        """
        ### BEGIN SOLUTION M4.5
        loss = metrics["val_loss"]
        if loss < self.best - self.min_delta:
            self.best, self.bad_evals = loss, 0
            return True
        self.bad_evals += 1
        return False
        ### END SOLUTION

    @property
    def should_stop(self) -> bool:
        """True once ``bad_evals`` reaches ``patience``."""
        return self.patience is not None and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
