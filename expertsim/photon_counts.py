"""Whole photons from expected photons, vectorised and keyed by (seed, row, fibre).

The sampler turns the generator's expected photons per fibre into Poisson counts. Each draw
takes one uniform that is a pure function of (seed, output row, fibre): the splitmix64 mixer
(Steele, Lea and Flood, OOPSLA 2014; SOURCES.md) applied to a key built from the three. So the
counts of a row do not depend on batching, sharding or which rows the gate passed, and all
draws of a batch are made at once in numpy instead of one bit generator per row.

Only fibres with a positive expectation are drawn (11.6 % of the fibres of a trained ZN model's
images, 4.2 % for ZP). Means up to ``SEARCH_UP_TO`` use the exact inverse CDF, searched upwards
from 0 for all draws at once (the loop runs as many times as the largest count among them);
larger means, rare, use scipy's Poisson quantile function.

Legend: N rows, P fibres (flattened image), M drawn fibres.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

SEARCH_UP_TO = 30.0  # expected photons: upward inverse-CDF search below, scipy's ppf above
PIECE_ROWS = 256  # rows drawn in one pass (poisson_counts)
DENSE_STEPS = 3  # search steps made on all draws at once before following the larger counts
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SPLIT_STREAM = np.uint64(1 << 32)  # key offset of the uniforms of a redrawn empty row


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of uint64 values (a bijection; wraps modulo 2^64)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def keyed_uniforms(seed: int, row_M: np.ndarray, index_M: np.ndarray) -> np.ndarray:
    """Uniforms in (0, 1), float64, each a function of (seed, row, index) alone."""
    seed_key = splitmix64(np.asarray([seed], dtype=np.uint64) ^ np.uint64(0x5EED))
    with np.errstate(over="ignore"):
        row_key = splitmix64(row_M.astype(np.uint64) ^ seed_key)
        bits = splitmix64(row_key + index_M.astype(np.uint64) * _GOLDEN)
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def poisson_quantile(mean_M: np.ndarray, uniform_M: np.ndarray) -> np.ndarray:
    """The Poisson(mean) count whose CDF first reaches the uniform (int64): exact inverse CDF,
    the same draw whatever other draws are made beside it."""
    mean_M = np.asarray(mean_M, dtype=np.float64)
    counts_M = np.zeros(len(mean_M), dtype=np.int64)
    small = np.nonzero(mean_M <= SEARCH_UP_TO)[0]
    rate, uniform = mean_M[small], uniform_M[small]
    term = np.exp(-rate)  # P(k), k = 0
    cumulative = term.copy()  # F(k)
    drawn = np.zeros(len(small), dtype=np.int64)
    # most means are below a photon: the first steps on whole arrays (no index bookkeeping)
    for k in range(1, DENSE_STEPS + 1):
        drawn += uniform > cumulative  # drawn = min(count, k)
        term *= rate / k
        cumulative += term
    active = np.nonzero(uniform > cumulative)[0]
    k = DENSE_STEPS
    # P(count > 200 | mean 30) < 1e-70: the bound only stops a uniform above the float sum
    while active.size and k < 200:
        k += 1
        drawn[active] = k
        term[active] *= rate[active] / k
        cumulative[active] += term[active]
        active = active[uniform[active] > cumulative[active]]
    counts_M[small] = drawn
    large = np.nonzero(mean_M > SEARCH_UP_TO)[0]
    if large.size:
        import scipy.stats  # here: its import is ~0.7 s of every sampler worker's start

        counts_M[large] = scipy.stats.poisson.ppf(uniform_M[large], mean_M[large]).astype(np.int64)
    return counts_M


def poisson_counts(expected_NHW: np.ndarray, seed: int, first_row: int = 0, *,
                   row_ids: np.ndarray | None = None, nonempty: bool = False,
                   threads: int = 1) -> np.ndarray:
    """Whole photons (N, H, W) uint32 drawn from expected photons per fibre; the draw of fibre
    p in row i uses the uniform keyed (seed, first_row + i, p), or (seed, row_ids[i], p) when
    given (see :func:`keyed_uniforms`).

    ``nonempty``: draw from the distribution given at least one photon (what a generator of
    the responses that leave light must give; see expertsim.models.counting.nonempty_counts,
    which the ONNX export runs): a row that drew nothing is redrawn as a zero-truncated
    Poisson total split multinomially over the fibres, from uniforms of its own keys.

    The rows are drawn in pieces of PIECE_ROWS (arrays that stay in the CPU's cache; one
    10,000-row pass was ~2x slower per row), on ``threads`` threads (numpy releases the GIL
    in its array loops). Every draw is keyed by its row, so the counts do not depend on
    either.
    """
    n_rows = len(expected_NHW)
    expected_NP = np.ascontiguousarray(expected_NHW).reshape(n_rows, -1)
    ids_N = (first_row + np.arange(n_rows, dtype=np.int64) if row_ids is None
             else np.asarray(row_ids, dtype=np.int64))
    counts_NP = np.zeros(expected_NP.shape, dtype=np.uint32)
    pieces = [slice(start, start + PIECE_ROWS) for start in range(0, n_rows, PIECE_ROWS)]

    def draw(piece: slice) -> None:
        counts_NP[piece] = _counts(expected_NP[piece], seed, ids_N[piece], nonempty)

    if threads > 1 and len(pieces) > 1:
        with ThreadPoolExecutor(min(threads, len(pieces))) as pool:
            list(pool.map(draw, pieces))
    else:
        for piece in pieces:
            draw(piece)
    return counts_NP.reshape(expected_NHW.shape)


def _counts(expected_NP: np.ndarray, seed: int, ids_N: np.ndarray, nonempty: bool
            ) -> np.ndarray:
    """poisson_counts of (N, P) expected photons with row keys ids_N, in one pass."""
    n_rows, n_fibres = expected_NP.shape
    flat_M = np.flatnonzero(expected_NP > 0)  # flat indices: one pass, no 2-D fancy indexing
    rows_M, fibres_M = np.divmod(flat_M, n_fibres)
    drawn_M = poisson_quantile(expected_NP.ravel()[flat_M],
                               keyed_uniforms(seed, ids_N[rows_M], fibres_M))
    counts_NP = np.zeros(expected_NP.shape, dtype=np.uint32)
    counts_NP.ravel()[flat_M] = drawn_M
    if nonempty:
        drawn_N = np.bincount(rows_M, weights=drawn_M, minlength=n_rows)
        possible_N = np.bincount(rows_M, minlength=n_rows)
        empty_R = np.nonzero((drawn_N == 0) & (possible_N > 0))[0]
        if empty_R.size:
            expected_RP = np.maximum(expected_NP[empty_R], 0.0).astype(np.float64)
            counts_NP[empty_R] = _zero_truncated_split(expected_RP, seed, ids_N[empty_R])
    return counts_NP


def _zero_truncated_split(expected_RP: np.ndarray, seed: int, ids_R: np.ndarray) -> np.ndarray:
    """Poisson images given at least one photon (R, P) uint32: each row's total from the
    zero-truncated Poisson of its expected sum (inverse CDF), its photons placed in fibres with
    probability proportional to their expectation (a Poisson image given its total is
    multinomial). Row r's uniforms are keyed (seed, ids_R[r], _SPLIT_STREAM + j)."""
    n_rows, n_fibres = expected_RP.shape
    total_R = expected_RP.sum(axis=1)
    first_R = keyed_uniforms(seed, ids_R, np.full(n_rows, _SPLIT_STREAM))
    quantile_R = np.exp(-total_R) + first_R * -np.expm1(-total_R)
    photons_R = np.maximum(poisson_quantile(total_R, quantile_R), 1)
    slots = int(photons_R.max())
    uniform_RS = keyed_uniforms(seed, np.repeat(ids_R, slots),
                                np.tile(_SPLIT_STREAM + 1 + np.arange(slots, dtype=np.uint64),
                                        n_rows)).reshape(n_rows, slots)
    # one sorted search for all rows: row r's cumulative shares and uniforms shifted by r
    shift_R = np.arange(n_rows, dtype=np.float64)
    cumulative_RP = np.cumsum(expected_RP, axis=1) / total_R[:, None] + shift_R[:, None]
    index_RS = np.searchsorted(cumulative_RP.ravel(), (uniform_RS + shift_R[:, None]).ravel(),
                               side="right").reshape(n_rows, slots)
    fibre_RS = np.clip(index_RS - (shift_R[:, None] * n_fibres).astype(np.int64), 0,
                       n_fibres - 1)
    placed_RS = np.arange(slots)[None, :] < photons_R[:, None]
    flat = (np.arange(n_rows)[:, None] * n_fibres + fibre_RS)[placed_RS]
    return np.bincount(flat, minlength=n_rows * n_fibres).reshape(
        n_rows, n_fibres).astype(np.uint32)
