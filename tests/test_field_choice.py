"""Which field leads: a draw within the ring's noise does not displace a field of stronger evidence."""

from __future__ import annotations

import numpy as np

from slimreg.register.fields import AGREEING, DEEPFLOW, PIECES, FieldCandidate, takes_the_lead
from slimreg.register.similarity import CLEAR_GAIN_SD

FLOW = np.zeros((4, 4, 2), np.float32)
NOISE = 0.033  # the ring's standard deviation on the shared calcium frames


def _field(source: str, smoothing: float = 0.02) -> FieldCandidate:
    return FieldCandidate(smoothing, 0.3 if source == AGREEING else float("nan"), FLOW, 2.0, source)


def test_one_estimate_displaces_agreeing_flows_only_by_a_clear_margin() -> None:
    """The shared calcium frames with OpenCV 4.14: the pieces' field 0.4775 against the agreeing flows' 0.4741 is a
    draw (0.1 ring sd) and leaves the flows in the lead; by more than two ring sd it takes it."""
    agreeing, pieces, deepflow = _field(AGREEING), _field(PIECES), _field(DEEPFLOW)
    assert not takes_the_lead(pieces, 0.4775, agreeing, 0.4741, NOISE, None)
    assert not takes_the_lead(deepflow, 0.4775, agreeing, 0.4741, NOISE, None)
    clear = 0.4741 + CLEAR_GAIN_SD * NOISE + 1e-3
    assert takes_the_lead(pieces, clear, agreeing, 0.4741, NOISE, None)


def test_higher_is_enough_between_fields_of_equal_evidence() -> None:
    """Against the affine alone, against another single estimate, or between two smoothings of agreeing flows,
    any higher score leads; the finest field must still be clearly higher."""
    pieces, deepflow = _field(PIECES), _field(DEEPFLOW)
    finer = _field(DEEPFLOW, 0.004)
    assert takes_the_lead(pieces, 0.45, None, 0.449, NOISE, finer)
    assert takes_the_lead(pieces, 0.4775, deepflow, 0.4741, NOISE, finer)
    assert takes_the_lead(_field(AGREEING, 0.08), 0.4775, _field(AGREEING), 0.4741, NOISE, finer)
    assert not takes_the_lead(finer, 0.4775, pieces, 0.4741, NOISE, finer)
