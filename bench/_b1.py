"""The B1 training options that ``b1_cmapss.py`` (the benchmark) and ``b1_cv.py`` (its model
selection) share, with B1's defaults, so that a setting chosen in one runs the same in the other."""

from __future__ import annotations

import argparse

from cloud.training import cmapss


def training_options(ap: argparse.ArgumentParser) -> None:
    """``--reference``, ``--far-weight``, ``--drop-prob``, ``--drop-min-keep`` and ``--w-gate``."""
    ap.add_argument(
        "--reference",
        type=int,
        default=cmapss.B1_REFERENCE,
        help="each unit's own reference: its first N cycles (0: none; at most 31)",
    )
    ap.add_argument(
        "--far-weight",
        type=float,
        default=cmapss.B1_FAR_WEIGHT,
        help="weight in the RUL loss of windows further from failure than any test truth (145 cycles)",
    )
    ap.add_argument(
        "--drop-prob", type=float, default=0.5, help="share of batches trained with token dropping"
    )
    ap.add_argument(
        "--drop-min-keep",
        type=float,
        default=0.5,
        help="the batches trained with token dropping keep a share of the tokens drawn from [this, 1]",
    )
    ap.add_argument(
        "--w-gate",
        type=float,
        default=cmapss.B1_W_GATE,
        help="L1 pressure on the full model's mean gate while training (the edge distils without)",
    )
