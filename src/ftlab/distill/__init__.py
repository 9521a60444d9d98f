"""Distillation track — a small student learns from a larger teacher.

Task (solution region): C.8 :func:`distillation_loss` (the generalized Jensen–Shannon
divergence between the teacher's and the student's next-token distributions, token by token:
beta 0 the forward KL, 1 the reverse KL; temperature on both sides; a masked mean). Taught in
``notebooks/10_distillation.ipynb``, graded with the capstone.
"""

from ftlab.distill.loss import distillation_loss

__all__ = ["distillation_loss"]
