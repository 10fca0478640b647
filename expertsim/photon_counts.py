"""Whole photons from expected photons, vectorised and keyed by (seed, row).

The sampler turns the generator's expected photons per fibre into Poisson counts. Each draw
takes uniforms that are a pure function of (seed, output row, index): the splitmix64 mixer
(Steele, Lea and Flood, OOPSLA 2014; SOURCES.md) applied to a key built from the three. So the
counts of a row depend on its own expectations, the seed and its row id alone, not on batching,
sharding or which rows the gate passed, and all draws of a batch are made at once in numpy
instead of one bit generator per row.

Two draws, one law. A fibre expecting more than ``FAINT_UP_TO`` photons gets a Poisson draw of
its own (index: the fibre). The faint fibres of a row (expectation in (0, FAINT_UP_TO]) are
drawn together: their total from the Poisson law of their summed expectation, its photons placed
one by one in fibre p with probability proportional to p's expectation. Independent Poisson
counts given their total are multinomial with those shares, so this is the same joint law as a
draw per fibre, at the cost of the row's few faint photons instead of its many faint fibres (a
trained ZP model with the intensity head: 95 % of fibres at most 0.1 photons, 4.3 photons in
them per event; ZN: 84 %, 19.5 photons).

Poisson draws with means up to ``SEARCH_UP_TO`` use the exact inverse CDF, searched upwards
from 0 for all draws at once (the loop runs as many times as the largest count among them);
larger means, rare, use scipy's Poisson quantile function.

Legend: N rows, P fibres (flattened image), M drawn fibres, R rows drawn apart, S photon slots.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SEARCH_UP_TO = 30.0  # expected photons: upward inverse-CDF search below, scipy's ppf above
FAINT_UP_TO = 0.1  # expected photons: fibres at most this are drawn as one total per row
PIECE_ROWS = 256  # rows drawn in one pass (poisson_counts)
DENSE_STEPS = 3  # search steps made on all draws at once before following the larger counts
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SPLIT_STREAM = np.uint64(1 << 32)  # key offset of the uniforms of a redrawn empty row
_FAINT_STREAM = np.uint64(1 << 33)  # key offset of the uniforms of a row's faint photons


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
    # the draws still searching, as compact arrays (compressed as they finish, instead of
    # gathered and scattered by index at every step)
    rate, uniform, term, cumulative = (v[active] for v in (rate, uniform, term, cumulative))
    k = DENSE_STEPS
    # P(count > 200 | mean 30) < 1e-70: the bound only stops a uniform above the float sum
    while active.size and k < 200:
        k += 1  # every draw left has count >= k
        term *= rate / k
        cumulative += term
        going = uniform > cumulative
        if going.all():
            continue
        drawn[active[~going]] = k
        active, rate, uniform, term, cumulative = (v[going] for v in (
            active, rate, uniform, term, cumulative))
    drawn[active] = k  # stopped by the bound
    counts_M[small] = drawn
    large = np.nonzero(mean_M > SEARCH_UP_TO)[0]
    if large.size:
        import scipy.stats  # here: its import is ~0.7 s of every sampler worker's start

        counts_M[large] = scipy.stats.poisson.ppf(uniform_M[large], mean_M[large]).astype(np.int64)
    return counts_M


def poisson_counts(expected_NHW: np.ndarray, seed: int, first_row: int = 0, *,
                   row_ids: np.ndarray | None = None, nonempty: bool = False,
                   threads: int = 1, faint_up_to: float = FAINT_UP_TO) -> np.ndarray:
    """Whole photons (N, H, W) uint32 drawn from expected photons per fibre (Poisson; the
    module's docstring says how); the draws of row i use uniforms keyed (seed, first_row + i,
    index), or (seed, row_ids[i], index) when given (see :func:`keyed_uniforms`).

    ``nonempty``: draw from the distribution given at least one photon (what a generator of
    the responses that leave light must give; see expertsim.models.counting.nonempty_counts,
    which the ONNX export runs): a row that drew nothing is redrawn as a zero-truncated
    Poisson total split multinomially over the fibres, from uniforms of its own keys.

    ``faint_up_to``: fibres expecting at most this many photons are drawn as one total per row
    (the module's docstring); 0 draws every fibre on its own (the same law, slower: the
    benchmark's reference).

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
        _counts(expected_NP[piece], seed, ids_N[piece], nonempty, faint_up_to,
                counts_NP[piece])

    if threads > 1 and len(pieces) > 1:
        with ThreadPoolExecutor(min(threads, len(pieces))) as pool:
            list(pool.map(draw, pieces))
    else:
        for piece in pieces:
            draw(piece)
    return counts_NP.reshape(expected_NHW.shape)


def _counts(expected_NP: np.ndarray, seed: int, ids_N: np.ndarray, nonempty: bool,
            faint_up_to: float, counts_NP: np.ndarray) -> None:
    """poisson_counts of (N, P) expected photons with row keys ids_N, in one pass, added to
    counts_NP (N, P) uint32, C-contiguous and zero."""
    n_rows, n_fibres = expected_NP.shape
    flat_counts = counts_NP.reshape(-1)  # a view
    weight_NP = np.maximum(expected_NP, 0.0, dtype=np.float64)  # a float64 copy, faint below
    flat_M = np.flatnonzero(weight_NP > max(faint_up_to, 0.0))  # flat: no 2-D fancy indexing
    rows_M, fibres_M = np.divmod(flat_M, n_fibres)
    weight = weight_NP.reshape(-1)
    drawn_M = poisson_quantile(weight[flat_M], keyed_uniforms(seed, ids_N[rows_M], fibres_M))
    flat_counts[flat_M] = drawn_M
    faint_N = photons_N = np.zeros(n_rows)
    if faint_up_to > 0:
        weight[flat_M] = 0.0
        running, faint_N = _block_sums(weight_NP)
        photons_N = poisson_quantile(faint_N, keyed_uniforms(seed, ids_N,
                                                             np.full(n_rows, _FAINT_STREAM)))
        np.add.at(flat_counts, _place(weight_NP, running, faint_N, photons_N, seed, ids_N,
                                      _FAINT_STREAM + np.uint64(1)), 1)
    if nonempty:
        drawn_N = np.bincount(rows_M, weights=drawn_M, minlength=n_rows) + photons_N
        possible_N = (np.bincount(rows_M, minlength=n_rows) > 0) | (faint_N > 0)
        empty_R = np.nonzero((drawn_N == 0) & possible_N)[0]
        if empty_R.size:
            expected_RP = np.maximum(expected_NP[empty_R], 0.0, dtype=np.float64)
            rows_S, fibres_S = np.divmod(_zero_truncated_split(expected_RP, seed,
                                                               ids_N[empty_R]), n_fibres)
            np.add.at(counts_NP, (empty_R[rows_S], fibres_S), 1)


def _zero_truncated_split(expected_RP: np.ndarray, seed: int, ids_R: np.ndarray) -> np.ndarray:
    """A Poisson image given at least one photon for each row of expected_RP (R, P), as the
    flat index in (R, P) of every photon: each row's total from the zero-truncated Poisson of
    its expected sum (inverse CDF), its photons placed by :func:`_place`. Row r's uniforms are
    keyed (seed, ids_R[r], _SPLIT_STREAM + j)."""
    running, total_R = _block_sums(expected_RP)
    first_R = keyed_uniforms(seed, ids_R, np.full(len(ids_R), _SPLIT_STREAM))
    quantile_R = np.exp(-total_R) + first_R * -np.expm1(-total_R)
    photons_R = np.maximum(poisson_quantile(total_R, quantile_R), 1)
    return _place(expected_RP, running, total_R, photons_R, seed, ids_R,
                  _SPLIT_STREAM + np.uint64(1))


@functools.lru_cache(maxsize=None)
def _block_size(n_fibres: int) -> int:
    """Fibres per block of :func:`_block_sums`: the divisor of n_fibres nearest its square root
    (44 for ZN's 1,936 fibres, 40 for ZP's 1,680), so that finding a photon's block and its
    fibre in the block each look at ~sqrt(n_fibres) numbers."""
    divisors = [d for d in range(1, n_fibres + 1) if n_fibres % d == 0]
    return min(divisors, key=lambda d: (abs(d - math.sqrt(n_fibres)), d))


def _block_sums(weight_RP: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(running sums over each row's blocks of _block_size fibres (R, blocks), each row's sum
    (R,)): the fibres are summed block by block (a vectorised reduction), and only the block
    sums are accumulated, instead of a running sum over every fibre."""
    n_rows, n_fibres = weight_RP.shape
    size = _block_size(n_fibres)
    running_RB = np.cumsum(weight_RP.reshape(n_rows, n_fibres // size, size).sum(axis=2),
                           axis=1)
    return running_RB, running_RB[:, -1].copy()


def _place(weight_RP: np.ndarray, running_RB: np.ndarray, total_R: np.ndarray,
           photons_R: np.ndarray, seed: int, ids_R: np.ndarray, stream: np.uint64
           ) -> np.ndarray:
    """photons_R[r] photons placed in row r's fibres, each independently in fibre p with
    probability weight_RP[r, p] / total_R[r], as flat indices into (R, P), row by row: photon j
    of row r takes the uniform u keyed (seed, ids_R[r], stream + j) and goes to the fibre where
    the row's running sum first exceeds u total_R[r] (inverse CDF), found in two steps: the
    block, from the running block sums of :func:`_block_sums` (``running_RB``), then the fibre,
    from the running sum of that block's fibres alone. A fibre of weight 0 never gets a
    photon."""
    n_rows, n_fibres = weight_RP.shape
    lit_R = np.nonzero(photons_R > 0)[0]
    if not lit_R.size:
        return np.zeros(0, dtype=np.int64)
    photons_R = photons_R[lit_R].astype(np.int64)
    slots = int(photons_R.max())
    uniform_RS = keyed_uniforms(seed, np.repeat(ids_R[lit_R], slots),
                                np.tile(stream + np.arange(slots, dtype=np.uint64),
                                        len(lit_R))).reshape(len(lit_R), slots)
    used_RS = np.arange(slots) < photons_R[:, None]
    target_S = (uniform_RS * total_R[lit_R, None])[used_RS]
    rows_S = np.repeat(lit_R, photons_R)
    n_blocks = running_RB.shape[1]
    size = n_fibres // n_blocks
    running_SB = running_RB[rows_S]
    # the first block whose running sum exceeds the target (the last one if rounding put the
    # target at the row's sum)
    block_S = np.minimum((running_SB <= target_S[:, None]).sum(axis=1), n_blocks - 1)
    photon = np.arange(len(rows_S))
    before_S = np.where(block_S > 0, running_SB[photon, np.maximum(block_S - 1, 0)], 0.0)
    within_SK = np.cumsum(weight_RP.reshape(n_rows, n_blocks, size)[rows_S, block_S], axis=1)
    fibre_S = np.minimum((within_SK <= (target_S - before_S)[:, None]).sum(axis=1), size - 1)
    first_S = rows_S * n_fibres
    flat_S = first_S + block_S * size + fibre_S
    weight = weight_RP.reshape(-1)
    # a target that rounding put at or past the end of its block or row lands on a fibre of
    # weight 0 (rare): it takes the row's last lit fibre up to there, or its first one
    for bad in np.nonzero(weight[flat_S] <= 0)[0]:
        lit = np.flatnonzero(weight[first_S[bad]:first_S[bad] + n_fibres])
        before = lit[lit <= flat_S[bad] - first_S[bad]]
        flat_S[bad] = first_S[bad] + (before[-1] if before.size else lit[0])
    return flat_S
