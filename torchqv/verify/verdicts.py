"""The verifier's typed outcomes: ``Verdict`` (a region), ``Decision`` (one proof stage) and
``SearchStatus`` (a CEG4N bit-width search).

All are str-valued enums (:class:`torchqv.enums.Choice`): ``result.verdict == "EQUIVALENT"``
still holds and JSON gets the plain strings.  CEG4N's statuses keep the codes of Matos Júnior,
"An automated method for neural network quantization refinement" (PhD thesis, UFAM 2025),
Tables 2-9.
"""

from __future__ import annotations

from ..enums import Choice


class Verdict(Choice):
    """What ``verify_equivalence`` concluded on one region."""

    EQUIVALENT = "EQUIVALENT"  # proved for every input of the region
    NOT_EQUIVALENT = "NOT_EQUIVALENT"  # an exact counterexample, replayed on both networks
    UNKNOWN = "UNKNOWN"  # no decision within the time limit (or a conservative internal check)


class Decision(Choice):
    """The outcome of one proof stage (input branching, LP search, one z3 query)."""

    PROVED = "proved"  # the stage closed every case it was given
    REFUTED = "refuted"  # it found a candidate counterexample (replayed exactly before use)
    OPEN = "open"  # no decision (time, or a case it cannot close); a later stage goes on


class SearchStatus(Choice):
    """The status of a CEG4N search (the thesis' codes)."""

    SQ = "SQ"  # success: the returned bits are proved equivalent on every region
    QF = "QF"  # quantization failure: every bit vector of the range is refuted
    TO = "TO"  # time or iteration limit
    VF = "VF"  # verification failure: a region could not be decided
