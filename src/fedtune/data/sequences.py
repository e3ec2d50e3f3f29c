"""Antibody chain validation: the amino-acid alphabet and length limits."""

from __future__ import annotations

AMINO_ACIDS = frozenset("ACDEFGHIKLMNPQRSTVWY")
MAX_CHAIN_LENGTH = 256


class DataError(ValueError):
    """Input data that cannot be used; the message names where and why."""


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def normalise(seq: str) -> str:
    """Strip surrounding whitespace and upper-case a chain's ASCII letters only: 'ß'.upper() == 'SS' must
    not turn one invalid character into two serines."""
    return seq.strip().translate(_ASCII_UPPER)


def chain_problem(seq: str, max_length: int = MAX_CHAIN_LENGTH) -> str | None:
    """Return why `seq` (already normalised) is not a valid chain, or None when it is.

    The message names the 1-based position and the character, e.g. "invalid residue 'X' at position 17".
    """
    if not seq:
        return "empty sequence"
    if len(seq) > max_length:
        return f"sequence of length {len(seq)} exceeds the limit of {max_length}"
    for i, ch in enumerate(seq):
        if ch not in AMINO_ACIDS:
            return f"invalid residue {ch!r} at position {i + 1} (allowed: {''.join(sorted(AMINO_ACIDS))})"
    return None


def bad_residue_position(seq: str) -> int | None:
    """0-based index of the first character outside the alphabet, or None."""
    for i, ch in enumerate(seq):
        if ch not in AMINO_ACIDS:
            return i
    return None
