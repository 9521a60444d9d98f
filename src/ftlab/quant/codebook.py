"""M3.1 — the NF4 codebook; the 8-bit dynamic code and nearest-code lookup (given).

A 4-bit code is an index into a table of 16 values in [-1, 1]. NF4 places the values at
quantiles of the standard normal distribution, so a normally distributed weight block
(scaled by its absolute maximum) uses every code about equally often.
"""

from __future__ import annotations

from functools import cache

import torch

NF4_OFFSET = 0.9677083
"""Outermost normal quantile NF4 uses: the mean of 1 - 1/(2*15) and 1 - 1/(2*16), to the 7
digits bitsandbytes (and the QLoRA paper) use. ppf(1) is infinite, so the grid stops here."""


@cache
def nf4_codebook() -> torch.Tensor:
    """The 16 NF4 levels, sorted ascending, float32 on the CPU, exactly bitsandbytes' NF4 table.

    Computed once and cached (it is read on every (de)quantization): never modify it in place.

    Construction (QLoRA, Dettmers et al. 2023): 8 positive levels at the standard-normal
    quantiles ``ppf(p)`` for ``p`` = 9 float32 points evenly spaced from ``NF4_OFFSET`` down to
    0.5, dropping the last (0.5); 7 negative levels ``-ppf(p)`` for 8 such points dropping the
    last; plus an exact 0 (+0.0, not -0.0). The quantiles are computed in float64
    (``torch.special.ndtri``), the 16 values are cast to float32, sorted, and divided by their
    maximum in float32 (that order, or an ulp differs from bitsandbytes), so the table runs from
    -1 to 1 with 0 at index 7. The asymmetry (8 positive, 7 negative) is what buys
    an exact zero with an even number of levels.
    """
    ### BEGIN SOLUTION M3.1
    positive = torch.linspace(NF4_OFFSET, 0.5, 9)[:-1].double()
    negative = torch.linspace(NF4_OFFSET, 0.5, 8)[:-1].double()
    levels = torch.cat([torch.special.ndtri(positive), torch.zeros(1, dtype=torch.float64),
                        -torch.special.ndtri(negative)]).float().sort().values
    return levels / levels.max()
    ### END SOLUTION


@cache
def dynamic_code() -> torch.Tensor:
    """The signed 8-bit dynamic code bitsandbytes uses for double quantization: 256 sorted
    float32 values in [-1, 1] (equal to ``bitsandbytes.functional.create_dynamic_map()``),
    on the CPU, cached: never modify it in place.

    Seven decades 1e-6 … 1: decade ``e`` (0..6) holds ``2**e`` magnitudes, the midpoints of
    ``2**e + 1`` points evenly spaced on [0.1, 1] scaled by ``10**(e-6)``, each with both
    signs; then 0 and 1. Small magnitudes get few levels, large ones many — the absmax values
    being quantized cluster around their mean, so after subtracting it most are small.
    """
    values = []
    for e in range(7):
        edges = torch.linspace(0.1, 1.0, 2**e + 1)
        mids = (edges[:-1] + edges[1:]) / 2
        values += [10.0 ** (e - 6) * mids, -(10.0 ** (e - 6)) * mids]
    return torch.cat(values + [torch.tensor([0.0, 1.0])]).sort().values


def nearest_code(values: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index (uint8) of the code value nearest to each of ``values``; ties go to the lower one.

    ``code`` must be sorted ascending; it is moved to ``values``' device. Compares against the
    midpoints between neighbouring levels, which is what bitsandbytes' reference kernels do.
    """
    code = code.to(values.device)
    midpoints = (code[:-1] + code[1:]) / 2
    return torch.bucketize(values, midpoints).to(torch.uint8)
