"""Adam with a per-expert learning-rate scale for weights stacked over experts.

The published method scales each expert's learning rate by the fraction of the batch routed
to it. Expert weights here are stacked (leading dimension E), so a plain per-parameter-group
learning rate cannot do that; this optimizer multiplies the Adam update of slice e by
``scale_E[e]``, a tensor that stays on the device (no host synchronisation).
"""

from __future__ import annotations

import torch


class ExpertAdam(torch.optim.Optimizer):
    """Adam (no weight decay) whose update of expert slice e is multiplied by ``scale_E[e]``.

    Parameters must all have leading dimension E. Call :meth:`set_expert_scale` before
    :meth:`step`; with scale 1 it is exactly Adam.
    """

    def __init__(self, params, n_experts: int, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.5, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.n_experts = n_experts
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.shape[0] != n_experts:
                    raise ValueError(f"parameter of shape {tuple(parameter.shape)} is not "
                                     f"stacked over {n_experts} experts")
        self._scale_E: torch.Tensor | None = None

    def set_expert_scale(self, scale_E: torch.Tensor) -> None:
        self._scale_E = scale_E.detach()

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(parameter)
                    state["exp_avg_sq"] = torch.zeros_like(parameter)
                state["step"] += 1
                grad = parameter.grad
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"].to(parameter.device)
                correction1 = 1 - beta1 ** step
                correction2 = 1 - beta2 ** step
                denominator = (state["exp_avg_sq"] / correction2).sqrt_().add_(group["eps"])
                update = state["exp_avg"] / correction1 / denominator
                if self._scale_E is not None:
                    shape = (-1,) + (1,) * (parameter.dim() - 1)
                    update.mul_(self._scale_E.to(update.dtype).view(shape))
                parameter.sub_(update, alpha=group["lr"])
        return None
