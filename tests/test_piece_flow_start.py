"""The start a dense flow proposes for a piece of torn tissue (slimreg.register.pieces.flow_fit)."""

from __future__ import annotations

import numpy as np

from slimreg.register.pieces import flow_fit

HEIGHT, WIDTH = 300, 400


def _pull_flow(pull: np.ndarray) -> np.ndarray:
    """The flow (reference grid; the placed image pulled at x + flow(x)) of the pull matrix ``pull`` everywhere."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    return np.stack([pull[0, 0] * xs + pull[0, 1] * ys + pull[0, 2] - xs,
                     pull[1, 0] * xs + pull[1, 1] * ys + pull[1, 2] - ys], axis=-1).astype(np.float32)


def _turned_and_shifted() -> np.ndarray:
    angle = np.radians(3.0)
    return np.array([[np.cos(angle), -np.sin(angle), 14.0], [np.sin(angle), np.cos(angle), -9.0], [0.0, 0.0, 1.0]])


def _piece() -> np.ndarray:
    piece = np.zeros((HEIGHT, WIDTH), bool)  # in the placed image's frame
    piece[80:220, 200:360] = True
    return piece


def test_the_flow_is_read_where_it_pulls_from_the_piece_on_tissue() -> None:
    """The proposal is the affine the flow follows over the reference tissue it pulls from the piece (placed frame),
    whatever the flow does elsewhere: where it does not pull from the piece it pulls from one point off it here
    (read in the reference's frame instead, the fit would take those), and off the reference tissue it is zero (a
    field smoothed towards none there, which would pull from the piece where it lies); yet the proposal is the
    piece's pull exactly."""
    pull, piece = _turned_and_shifted(), _piece()
    flow = _pull_flow(pull)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    pulled_x = np.rint(xs + flow[..., 0]).astype(int).clip(0, WIDTH - 1)
    pulled_y = np.rint(ys + flow[..., 1]).astype(int).clip(0, HEIGHT - 1)
    elsewhere = ~piece[pulled_y, pulled_x]
    flow[elsewhere, 0], flow[elsewhere, 1] = 20.0 - xs[elsewhere], 20.0 - ys[elsewhere]  # all from (20, 20)
    tissue = np.ones((HEIGHT, WIDTH), bool)
    tissue[:, 280:300] = False  # a gap in the reference tissue across the piece
    flow[~tissue] = 0.0
    assert np.allclose(flow_fit(flow, piece, tissue), pull, atol=0.02)


def test_no_proposal_where_the_flow_pulls_too_little_tissue_from_the_piece() -> None:
    """A flow that pulls from the piece nowhere, or from it only off the reference tissue, proposes nothing."""
    piece, everywhere = _piece(), np.ones((HEIGHT, WIDTH), bool)
    assert flow_fit(np.full((HEIGHT, WIDTH, 2), 1000.0, np.float32), piece, everywhere) is None
    assert flow_fit(_pull_flow(_turned_and_shifted()), piece, np.zeros((HEIGHT, WIDTH), bool)) is None
