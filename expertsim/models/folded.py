"""One expert of an ExpertGenerator rewritten for inference: the same function, ~2.5x fewer
FLOPs and no channel concatenation.

Two exact identities of the generator's layers (ExpertGenerator._draw), used together:

- **Nearest upsampling then a 3x3 convolution is four 2x2 convolutions of the small map**
  (one per output phase: row parity a, column parity b). Output row 2i + a of a 3x3
  convolution reads upsampled rows 2i + a - 1, 2i + a, 2i + a + 1, which are small-map rows
  {i - 1, i, i} for a = 0 and {i, i, i + 1} for a = 1: two distinct rows, the kernel rows that
  read the same one summed. The same for columns. So one 2x2 convolution with 4 x C_out
  outputs (padding 1) on the small map gives all four phases, which are interleaved into the
  large map: 16 instead of 36 multiply-adds per small-map pixel and input channel.
- **The coordinate and radial channels are rank one.** Each extra channel that
  centred_coordinates appends is a product f(row) g(column): the row coordinate is u(row) x 1,
  the column coordinate 1 x v(column), a radial channel exp(-du^2 / 2s^2) exp(-dv^2 / 2s^2).
  A convolution's zero padding keeps that form (a product is zero where either factor is
  padded), so a 3x3 convolution of those channels is sum over channels and kernel rows of
  f(row + dy) times (the kernel row applied to g along the columns): a batched matrix product
  of (rows x 3 R) by (3 R x columns x C_out) instead of 9 R multiply-adds per output pixel
  and channel, and the channels are never built or concatenated. The right-hand factor is
  itself one matrix product (the shifted column factors by a block-diagonal arrangement of
  the kernel, rank_one_kernel), laid out so that no permuted copy is made. The factors are
  evaluated directly on the shifted cells (shifted_cells: each position's three neighbours,
  zero outside the map), once per map size, so a traced graph has no padding, slicing and
  stacking per factor.

The output convolution (C channels to one) runs in eager inference as one matrix product to
the nine taps' planes and eight shifted additions (single_output_conv); oneDNN's convolution
to a single channel was the slowest layer per FLOP. A traced graph keeps the Conv (one
operator for ONNX Runtime).

For a 16-channel ZN expert with radial conditioning: 12.6 -> 5.7 MFLOP an event (PyTorch's
FLOP counter, benchmarks/production.py; 5.1 before the block-diagonal product, whose zeros
cost less time than the permuted copy they replaced).
The outputs equal ExpertGenerator.forward_expert's up to float rounding
(tests/test_folded.py). Built from the generator's weights at one moment: inference only
(MixtureOfExperts rebuilds it when the weights change).

Legend: B events, C channels, O output channels, R extra channels, h x w small map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from expertsim.models.conditioning import cell_coordinate
from expertsim.models.experts import condition_features

# kernel rows (or columns) of a 3x3 kernel that read each of a phase's two small-map rows:
# phase 0 reads rows i - 1 (kernel row 0) and i (kernel rows 1, 2), phase 1 reads i (rows 0, 1)
# and i + 1 (row 2)
_PHASE_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))


def phase_kernels(weight_OC33: torch.Tensor) -> torch.Tensor:
    """A 3x3 kernel applied after nearest x2 upsampling -> the (4 O, C, 2, 2) kernel of the
    four phases (a, b) in the order 2 a + b, each O channels."""
    phases = []
    for row_taps in _PHASE_TAPS:
        for col_taps in _PHASE_TAPS:
            phases.append(torch.stack([torch.stack([
                weight_OC33[:, :, list(rows)][:, :, :, list(cols)].sum(dim=(2, 3))
                for cols in col_taps], dim=-1) for rows in row_taps], dim=-2))
    return torch.cat(phases, dim=0)


def upsampled_conv(h_BChw: torch.Tensor, kernel_4OC22: torch.Tensor, bias_4O: torch.Tensor,
                   small: tuple[int, int]) -> torch.Tensor:
    """conv3x3(nearest_upsample_x2(h)) + bias from phase_kernels' kernel (and the bias
    repeated for the four phases) on the (B, C, h, w) map h, ``small`` = (h, w) given as
    numbers (a traced graph then has fixed slices, not shape arithmetic); returned
    channels-last as (B, 2h, 2w, O), a new tensor."""
    height, width = small
    out_channels = kernel_4OC22.shape[0] // 4
    layout = torch.channels_last
    y = F.conv2d(h_BChw.contiguous(memory_format=layout),
                 kernel_4OC22.contiguous(memory_format=layout), bias_4O, padding=1)
    if torch.jit.is_tracing():  # the exporters mistranslate the in-place copies below
        # each phase one slice of the channels-last map, then one interleaving transpose:
        # few operators (ONNX Runtime pays per operator at batch 1)
        y_Bhw4O = y.permute(0, 2, 3, 1)
        out = torch.cat([y_Bhw4O[:, a:a + height, b:b + width,
                                 (2 * a + b) * out_channels:(2 * a + b + 1) * out_channels]
                         for a in (0, 1) for b in (0, 1)], dim=3)
        out = out.view(-1, height, width, 2, 2, out_channels).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(-1, 2 * height, 2 * width, out_channels)
    y_Bhw4O = y.permute(0, 2, 3, 1).reshape(-1, height + 1, width + 1, 2, 2, out_channels)
    phases = [[y_Bhw4O[:, a:a + height, b:b + width, a, b] for b in (0, 1)] for a in (0, 1)]
    out = y.new_empty(len(y), height, 2, width, 2, out_channels)  # [b, i, a, j, b', o]
    for a in (0, 1):
        for b in (0, 1):
            out[:, :, a, :, b].copy_(phases[a][b])  # one copy, no stacked intermediates
    return out.view(-1, 2 * height, 2 * width, out_channels)


def rank_one_kernel(weight_OR33: torch.Tensor) -> torch.Tensor:
    """The (3 R, O 3 R) matrix that add_rank_one_conv_ multiplies the column factors by:
    [(r', k), (o, r, j)] = weight[o, r, j, k] where r' = r, zero otherwise (block diagonal in
    the channel, so that one matrix product gives every channel's kernel rows at once)."""
    out_channels, extra = weight_OR33.shape[:2]
    eye_RR = torch.eye(extra, dtype=weight_OR33.dtype, device=weight_OR33.device)
    # [r', k, o, r, j] = eye[r', r] weight[o, r, j, k]
    kernel = eye_RR[:, None, None, :, None] * weight_OR33.permute(3, 0, 1, 2)[None]
    return kernel.reshape(3 * extra, out_channels * 3 * extra).contiguous()


def add_rank_one_conv_(y_BHWO: torch.Tensor, rows_BHR3: torch.Tensor,
                       cols_BWR3: torch.Tensor, kernel: torch.Tensor, size: tuple[int, int]
                       ) -> torch.Tensor:
    """Adds to the contiguous (B, H, W, O) y, ``size`` = (H, W) given as numbers (in place,
    returned; a new tensor when traced) the 3x3 convolution (zero padding 1, no bias) of the
    R channels rows_r(y) cols_r(x), whose weights rank_one_kernel gave as ``kernel``. The
    factors come shifted (shift_factors' layout): rows_BHR3[b, y, r, j] = rows_r(y + j - 1),
    cols_BWR3[b, x, r, k] = cols_r(x + k - 1), zero outside the map.

    With K = (r, j): y[b, Y, (X, o)] += sum_K rows_r(Y + j - 1) A[b, K, (X, o)], where
    A[b, (r, j), (X, o)] = sum_k cols_r(X + k - 1) weight[o, r, j, k] is one matrix product
    of the shifted column factors (B W, 3 R) by ``kernel``, laid out as A transposed (no
    permuted copy; the batched product reads it as a transposed operand)."""
    height, width = size
    extra = rows_BHR3.shape[2]
    out_channels = kernel.shape[1] // (3 * extra)
    y_BHV = y_BHWO.view(-1, height, width * out_channels)
    left_BHK = rows_BHR3.reshape(-1, height, 3 * extra).to(y_BHV.dtype)
    cols_XK = cols_BWR3.reshape(-1, 3 * extra).to(y_BHV.dtype)
    along_BVK = torch.mm(cols_XK, kernel.to(y_BHV.dtype)).view(-1, width * out_channels,
                                                                3 * extra)
    if torch.jit.is_tracing():
        return (y_BHV + torch.bmm(left_BHK, along_BVK.transpose(1, 2))).view(
            -1, height, width, out_channels)
    y_BHV.baddbmm_(left_BHK, along_BVK.transpose(1, 2))
    return y_BHWO


def shift_factors(factor_BRL: torch.Tensor) -> torch.Tensor:
    """(B, R, L) -> (B, L, R, 3): [b, x, r, k] = factor_r(x + k - 1), zero outside (the
    layout add_rank_one_conv_ takes, from factors given on the map's own cells)."""
    length = factor_BRL.shape[2]
    padded_BLR = F.pad(factor_BRL, (1, 1)).transpose(1, 2)
    return torch.stack([padded_BLR[:, k:k + length] for k in range(3)], dim=3)


def shifted_cells(length: int, covered: int, extent: int, **options
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """cell_grids' coordinate of cell x + k - 1 of a map of ``length`` cells covering
    ``covered`` pixels of an image ``extent`` pixels long, as (length, 3) [x, k], and a
    (length, 3) mask, 0 where that cell lies outside the map (the zero padding). Factors
    evaluated on these cells are shift_factors' layout directly: an exported graph then has
    no padding, slices and stacking per factor (ONNX Runtime pays per operator at batch 1)."""
    index_L3 = (torch.arange(length, **options)[:, None]
                + torch.arange(3, **options)[None, :] - 1.0)
    grid_L3 = cell_coordinate(index_L3, length, covered, extent)
    mask_L3 = ((index_L3 >= 0) & (index_L3 < length)).to(grid_L3.dtype)
    return grid_L3, mask_L3


def single_output_conv(h_BHWC: torch.Tensor, taps_9C: torch.Tensor, bias_1: torch.Tensor
                       ) -> torch.Tensor:
    """The 3x3 convolution (zero padding 1) of the contiguous (B, H, W, C) map h to one
    output channel, as (B, H, W, 1) float32: one matrix product gives the nine taps' channel
    sums of every pixel, then each tap's plane is added shifted. oneDNN's convolution to one
    channel ran at a few GFLOP/s here (the same time with 16 output channels: not the
    arithmetic): 24 us a ZN event in bfloat16, 44 in float32, against ~17-19 and ~14 this way
    (one thread, 256 events)."""
    batch, height, width, channels = h_BHWC.shape
    planes = torch.mm(taps_9C.to(h_BHWC.dtype), h_BHWC.reshape(-1, channels).t())
    planes = planes.view(9, batch, height, width)
    out = planes[4].float() + bias_1.float()
    for tap in (0, 1, 2, 3, 5, 6, 7, 8):  # output (y, x) reads (y + dy, x + dx)
        dy, dx = tap // 3 - 1, tap % 3 - 1
        out[:, max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)] += planes[
            tap, :, max(0, dy):height + min(0, dy), max(0, dx):width + min(0, dx)]
    return out.unsqueeze(3)


class FoldedExpert(nn.Module):
    """ExpertGenerator.forward_expert(z, c, expert) for inference (module docstring)."""

    def __init__(self, generator, expert: int) -> None:
        super().__init__()
        self.generator, self.expert = generator, expert
        channels = generator.channels
        self.n_main = (2 * channels, channels, channels // 2)  # each conv's feature channels
        with torch.no_grad():
            w1, w2, w3 = (layer.weight[expert].detach().clone()
                          for layer in (generator.conv1, generator.conv2, generator.conv_out))
            self.register_buffer("kernel1", phase_kernels(w1[:, :self.n_main[0]]))
            self.register_buffer("kernel2", phase_kernels(w2[:, :self.n_main[1]]))
            self.register_buffer("kernel3", w3[:, :self.n_main[2]].contiguous())
            self.register_buffer("extra1", rank_one_kernel(w1[:, self.n_main[0]:]))
            self.register_buffer("extra2", rank_one_kernel(w2[:, self.n_main[1]:]))
            self.register_buffer("extra3", rank_one_kernel(w3[:, self.n_main[2]:]))
            self.register_buffer("bias1", generator.conv1.bias[expert].detach().repeat(4))
            self.register_buffer("bias2", generator.conv2.bias[expert].detach().repeat(4))
            self.register_buffer("bias3", generator.conv_out.bias[expert].detach().clone())
            # the output convolution's taps (3 j + k, C): single_output_conv
            self.register_buffer("taps3", self.kernel3[0].permute(1, 2, 0).reshape(9, -1)
                                 .contiguous())

    def forward(self, z_BZ: torch.Tensor, c_BK: torch.Tensor) -> torch.Tensor:
        generator, expert = self.generator, self.expert
        f_BF, placement_BP = condition_features(generator.features, c_BK)
        h = F.leaky_relu(generator.dense.single(torch.cat([z_BZ, f_BF], dim=1), expert), 0.2)
        h = h.view(-1, self.n_main[0], *generator.seed_shape)
        centre_B2 = self.centre(f_BF, placement_BP)
        small = tuple(generator.seed_shape)
        middle, canvas = (2 * small[0], 2 * small[1]), (4 * small[0], 4 * small[1])
        # the extra channels' factors, once per map size (the last two layers share them)
        on_middle, on_canvas = self._factors(centre_B2, middle), self._factors(centre_B2, canvas)
        y = upsampled_conv(h, self.kernel1, self.bias1, small)
        h = F.leaky_relu(self._add_extra_(y, on_middle, self.extra1, middle), 0.2, inplace=True)
        y = upsampled_conv(h.permute(0, 3, 1, 2), self.kernel2, self.bias2, middle)
        h = F.leaky_relu(self._add_extra_(y, on_canvas, self.extra2, canvas), 0.2, inplace=True)
        if torch.jit.is_tracing():  # one operator for ONNX Runtime
            layout = torch.channels_last
            y = F.conv2d(h.permute(0, 3, 1, 2).contiguous(memory_format=layout),
                         self.kernel3.contiguous(memory_format=layout), self.bias3, padding=1)
            y = y.permute(0, 2, 3, 1).contiguous()
        else:
            y = single_output_conv(h, self.taps3, self.bias3)
        with torch.autocast(y.device.type, enabled=False):  # one channel: float32 is cheap
            y = self._add_extra_(y, on_canvas, self.extra3, canvas)
        rows, cols = generator.image_shape
        return generator.output(y[:, :rows, :cols, 0], z_BZ, f_BF,
                                lambda layer, x: layer.single(x, expert))

    def centre(self, f_BF: torch.Tensor, placement_BP: torch.Tensor | None
               ) -> torch.Tensor | None:
        """The shower centre (B, 2) from the conditioning features and placement inputs
        (None without positional conditioning), always in float32: under bfloat16 autocast the
        placement map's rounding moved the centroids of ZP showers by 0.07 fibres on average
        from float32's (the study's seed-0 model, 4,096 held-out particles), by 0.0025 with the
        centre in float32; and the extra channels' factors are cheaper in float32 on a CPU."""
        generator, expert = self.generator, self.expert
        if generator.position is None:
            return None
        with torch.autocast(f_BF.device.type, enabled=False):
            return generator.position.draw(f_BF.float(), placement_BP.float(),
                                           lambda layer, x: layer.single(x, expert))

    @staticmethod
    def _add_extra_(y_BHWO: torch.Tensor, factors: tuple | None, kernel: torch.Tensor,
                    size: tuple[int, int]) -> torch.Tensor:
        """Adds to y (in place) the convolution of the extra channels centred_coordinates
        would append to a map of ``size`` (``factors``: _factors' for that size; ``kernel``:
        their rank_one_kernel)."""
        if factors is None:
            return y_BHWO
        return add_rank_one_conv_(y_BHWO, *factors, kernel, size)

    def _factors(self, centre_B2: torch.Tensor | None, size: tuple[int, int]
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Row and column factors of the channels centred_coordinates appends to a map of
        ``size`` = (height, width), [u, 1, radial...] and [1, v, radial...], shifted
        (shift_factors' layout: (B, height, R, 3), (B, width, R, 3)); None without
        positional conditioning."""
        if centre_B2 is None:
            return None
        generator = self.generator
        rows, cols = generator.image_shape
        canvas = (4 * generator.seed_shape[0], 4 * generator.seed_shape[1])
        options = {"dtype": centre_B2.dtype, "device": centre_B2.device}
        row_grid_H3, row_mask_H3 = shifted_cells(size[0], canvas[0], rows, **options)
        col_grid_W3, col_mask_W3 = shifted_cells(size[1], canvas[1], cols, **options)
        u_BH3 = row_grid_H3 - centre_B2[:, 0, None, None]
        v_BW3 = col_grid_W3 - centre_B2[:, 1, None, None]
        coordinate_rows = torch.stack([u_BH3 * row_mask_H3, row_mask_H3.expand_as(u_BH3)], dim=2)
        coordinate_cols = torch.stack([col_mask_W3.expand_as(v_BW3), v_BW3 * col_mask_W3], dim=2)
        if not generator.radial:
            return coordinate_rows, coordinate_cols
        inverse_R1 = (1.0 / (2.0 * torch.tensor(generator.radial, **options) ** 2))[:, None]
        du2_BH3 = (u_BH3 * (rows / 2.0)) ** 2
        dv2_BW3 = (v_BW3 * (cols / 2.0)) ** 2
        radial_rows = torch.exp(-du2_BH3[:, :, None, :] * inverse_R1) * row_mask_H3[:, None]
        radial_cols = torch.exp(-dv2_BW3[:, :, None, :] * inverse_R1) * col_mask_W3[:, None]
        return (torch.cat([coordinate_rows, radial_rows], dim=2),
                torch.cat([coordinate_cols, radial_cols], dim=2))
