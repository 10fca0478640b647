"""Layers whose weights are stacked over experts (leading dimension E).

Every layer takes the input of each event and ``expert_B``, the expert each event is routed
to, and applies that expert's weights. Three ways of doing it, same numbers:

- ``gather`` (default): each event gathers its expert's weights and one convolution with
  groups = B runs them all; every event costs one expert's FLOPs, no host synchronisation, no
  Python loop over experts.
- ``dense``: every expert runs on every event as one grouped convolution (groups = E) and the
  routed output is selected; E times the FLOPs, but static shapes.
- ``loop``: the reference implementations' way, a Python loop over experts on boolean-selected
  subsets (a host synchronisation per expert and layer); kept as the benchmark baseline.

``single(x, expert)`` applies one expert's weights to a whole batch (a plain layer); the
inference path (``MixtureOfExperts``) groups events by expert once and runs each group so.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DISPATCH_MODES = ("gather", "dense", "loop")


class ExpertLinear(nn.Module):
    """E independent linear maps: x_BI -> y_BO with expert_B's weight (E, I, O), bias (E, O).

    The linear layers are cheap, so ``gather`` and ``dense`` both compute every expert and
    select the routed output (no B x I x O weight copy).
    """

    def __init__(self, n_experts: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(n_experts, in_features, out_features)
                                   .uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_experts, out_features).uniform_(-bound, bound))

    def forward(self, x_BI: torch.Tensor, expert_B: torch.Tensor, mode: str = "gather"
                ) -> torch.Tensor:
        if mode == "loop":
            out_BO = x_BI.new_zeros(x_BI.shape[0], self.weight.shape[2])
            for expert in range(self.weight.shape[0]):
                index = (expert_B == expert).nonzero().squeeze(1)
                out_BO = out_BO.index_copy(0, index, x_BI[index] @ self.weight[expert]
                                           + self.bias[expert])
            return out_BO
        all_BEO = torch.einsum("bi,eio->beo", x_BI, self.weight) + self.bias
        index = expert_B.view(-1, 1, 1).expand(-1, 1, all_BEO.shape[2])
        return all_BEO.gather(1, index).squeeze(1)

    def single(self, x_BI: torch.Tensor, expert: int) -> torch.Tensor:
        return torch.addmm(self.bias[expert], x_BI, self.weight[expert])


class ExpertConv2d(nn.Module):
    """E independent 2-d convolutions, weight (E, C_out, C_in, k, k): x (B, C_in, H, W) ->
    (B, C_out, H', W') with each event's expert."""

    def __init__(self, n_experts: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        bound = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.weight = nn.Parameter(torch.empty(
            n_experts, out_channels, in_channels, kernel_size, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_experts, out_channels).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, expert_B: torch.Tensor, mode: str = "gather"
                ) -> torch.Tensor:
        n_experts, out_channels = self.weight.shape[:2]
        batch = x.shape[0]
        if mode == "gather":
            weight = self.weight[expert_B].flatten(0, 1)
            bias = self.bias[expert_B].flatten()
            y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), weight, bias, stride=self.stride,
                         padding=self.padding, groups=batch)
            return y.view(batch, out_channels, *y.shape[2:])
        if mode == "dense":
            repeated = x.repeat(1, n_experts, 1, 1)
            y = F.conv2d(repeated, self.weight.flatten(0, 1), self.bias.flatten(),
                         stride=self.stride, padding=self.padding, groups=n_experts)
            y = y.view(batch, n_experts, out_channels, *y.shape[2:])
            index = expert_B.view(-1, 1, 1, 1, 1).expand(-1, 1, *y.shape[2:])
            return y.gather(1, index).squeeze(1)
        if mode == "loop":
            outputs = []
            for expert in range(n_experts):
                index = (expert_B == expert).nonzero().squeeze(1)
                outputs.append((index, F.conv2d(x[index], self.weight[expert], self.bias[expert],
                                                stride=self.stride, padding=self.padding)))
            y = x.new_zeros(batch, out_channels, *outputs[0][1].shape[2:])
            for index, part in outputs:
                y = y.index_copy(0, index, part)
            return y
        raise ValueError(f"dispatch mode {mode!r} is not one of {DISPATCH_MODES}")

    def single(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        """Every event through one expert's convolution, in the channels-last layout: oneDNN's
        kernels for these few channels run 1.3-2.7x faster there on a CPU (ZN generator, one
        thread: 23 -> 8 channels at 44 x 44, 344 -> 129 us an event). Same values up to float
        rounding; a traced export does not see the layout."""
        layout = torch.channels_last
        return F.conv2d(x.contiguous(memory_format=layout),
                        self.weight[expert].contiguous(memory_format=layout),
                        self.bias[expert], stride=self.stride, padding=self.padding)
