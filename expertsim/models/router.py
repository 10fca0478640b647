"""The router, the auxiliary regressor, and the inference-time mixture."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from expertsim.models.conditioning import N_CONDITIONS
from expertsim.models.experts import ExpertGenerator
from expertsim.models.folded import FoldedExpert


class Router(nn.Module):
    """MLP on the scaled conditions: c_BK -> logits_BE.

    ``balance_bias_E`` (a buffer, not trained by gradients) is added to the logits. The
    trainer's balanced routing (train.balance_rate > 0) moves it after every step towards the
    experts that received fewer events than an equal share, so the routing decisions, in
    training and at inference alike, stay balanced without a loss term that fights the router's
    other objectives (auxiliary-loss-free load balancing, Wang et al. 2024, arXiv 2408.15664).
    Zero, it changes nothing; model files written before it existed load with zeros.
    """

    def __init__(self, n_experts: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(N_CONDITIONS, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, n_experts),
        )
        self.register_buffer("balance_bias_E", torch.zeros(n_experts))
        self.register_load_state_dict_pre_hook(_zero_bias_if_missing)

    def forward(self, c_BK: torch.Tensor) -> torch.Tensor:
        return self.net(c_BK) + self.balance_bias_E

    @torch.no_grad()
    def rebalance(self, fraction_E: torch.Tensor, rate: float) -> None:
        """Raise the bias of experts routed less than 1/E of the events, lower the others',
        in proportion to the shortfall: bias_e += rate * (1 - E * fraction_e)."""
        self.balance_bias_E += rate * (1.0 - len(fraction_E) * fraction_E)


def _zero_bias_if_missing(module, state_dict, prefix, *_) -> None:
    state_dict.setdefault(prefix + "balance_bias_E", torch.zeros_like(module.balance_bias_E))


def gumbel_route(logits_BE: torch.Tensor, gumbel_BE: torch.Tensor, temperature: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through Gumbel-softmax: (gates_BE, probs_BE).

    ``gates`` is exactly one-hot in the forward pass (each event goes to one expert) and
    carries the gradient of the soft sample; ``gumbel_BE`` is standard Gumbel noise, passed in
    so that the caller owns the random stream.
    """
    soft_BE = F.softmax((logits_BE + gumbel_BE) / temperature, dim=1)
    hard_BE = F.one_hot(soft_BE.argmax(dim=1), logits_BE.shape[1]).to(soft_BE.dtype)
    return hard_BE - soft_BE.detach() + soft_BE, F.softmax(logits_BE, dim=1)


class AuxRegressor(nn.Module):
    """Predicts the brightest fibre's position, x_NHW -> position_N2 in [0, 1]."""

    def __init__(self, image_shape: tuple[int, int], channels: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * channels * ((image_shape[0] + 3) // 4) * ((image_shape[1] + 3) // 4), 2),
            nn.Sigmoid(),
        )

    def forward(self, x_NHW: torch.Tensor) -> torch.Tensor:
        return self.net(x_NHW.unsqueeze(1))


class MixtureOfExperts(nn.Module):
    """Inference path: hard routing (argmax) and the routed expert's image.

    forward(z_BZ, c_BK) -> (image_BHW in log(1 + photons), expert_B int64); deterministic
    given the noise. The events are grouped by expert once and each group runs through its
    expert's plain layers: one expert's FLOPs per event and no per-event weight copies. The
    grouping is written with tensor operations only (nonzero, index_copy), so the same forward
    exports to ONNX with a dynamic batch.
    """

    # Eager inference runs FoldedExpert rewrites of the experts (same function up to float
    # rounding, ~2.5x fewer FLOPs); False runs the layers as trained (benchmarks/production.py
    # compares the two)
    fold_experts = True

    def __init__(self, router: Router, generator: ExpertGenerator) -> None:
        super().__init__()
        self.router, self.generator = router, generator
        # Reduced precision of the experts' arithmetic in eager inference (None: float32);
        # the router always decides in float32. Set by TrainedModel.set_precision.
        self.expert_dtype: torch.dtype | None = None
        # (weights' identity and versions, FoldedExpert per expert): rebuilt when the weights
        # change; kept out of the module tree, so never in a state dict
        self.__dict__["_folded"] = ((), [])

    def forward(self, z_BZ: torch.Tensor, c_BK: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        expert_B = self.router(c_BK).argmax(dim=1)
        image_BHW = z_BZ.new_zeros(z_BZ.shape[0], *self.generator.image_shape)
        for expert in range(self.generator.n_experts):
            index_N = (expert_B == expert).nonzero().squeeze(1)
            if not torch.jit.is_tracing() and index_N.numel() == 0:
                continue  # eager only: an exported graph must keep every branch
            with torch.autocast(z_BZ.device.type, dtype=self.expert_dtype or torch.bfloat16,
                                enabled=self.expert_dtype is not None):
                image_NHW = self._expert(expert)(z_BZ[index_N], c_BK[index_N])
            image_BHW = image_BHW.index_copy(0, index_N, image_NHW.to(image_BHW.dtype))
        return image_BHW, expert_B

    def _expert(self, expert: int):
        """Expert ``expert``'s generator as a function (z, c) -> image: its FoldedExpert in eager
        inference (no gradients, eval mode, not tracing; fold_experts), forward_expert
        otherwise."""
        if (not self.fold_experts or torch.is_grad_enabled() or self.training
                or torch.jit.is_tracing() or torch.jit.is_scripting()):
            return lambda z_BZ, c_BK: self.generator.forward_expert(z_BZ, c_BK, expert)
        key = tuple((p.data_ptr(), p._version) for p in self.generator.parameters())
        if self._folded[0] != key:
            self.__dict__["_folded"] = (key, [FoldedExpert(self.generator, e)
                                             for e in range(self.generator.n_experts)])
        return self._folded[1][expert]

    @torch.inference_mode()
    def generate(self, z_BZ: torch.Tensor, c_BK: torch.Tensor, chunk_size: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """forward() in chunks of ``chunk_size`` events (None: :meth:`chunk_size`)."""
        if chunk_size is None:
            chunk_size = self.chunk_size(z_BZ.device)
        parts = [self(z_BZ[i:i + chunk_size], c_BK[i:i + chunk_size])
                 for i in range(0, z_BZ.shape[0], chunk_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @staticmethod
    def chunk_size(device: torch.device | str) -> int:
        """Events per forward() in inference: on a CPU 512, so that the experts' maps stay
        cache-sized (a ZN model ran 10,000 events at 1,220 ev/s in one pass, 4,000 ev/s in
        chunks of 256; with FoldedExpert, bfloat16 and two threads, chunks of 512 gave ~9,300
        ev/s against ~8,000 for 256, one noisy run each); on a GPU 16,384 (it wants far
        larger ones)."""
        return 512 if torch.device(device).type == "cpu" else 16384
