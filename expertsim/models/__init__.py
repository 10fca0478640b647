"""The Mixture-of-Generative-Experts: router, batched experts, auxiliary regressor, losses.

Tensor-name legend used in this package's model code:
    B events in a batch, E experts, Z noise dimension, K = 9 conditions,
    H x W image, C channels, F discriminator feature size.

Contract of each part (shapes; images are log(1 + photons)):
    Router(c_BK)                                 -> logits_BE
    ExpertGenerator(z_BZ, c_BK, expert_B)        -> images_BHW (each event by its expert)
    ExpertDiscriminator(x_BHW, c_BK, expert_B)   -> logits_B, features_BF
    AuxRegressor(x_NHW)                          -> position_N2 in [0, 1]
                                                    (row / (H-1), column / (W-1))
    MixtureOfExperts(z_BZ, c_BK)                 -> image_BHW, expert_B (hard routing)

With ``conditioning="positional"`` generators and discriminators extend c_BK by derived
features and give their convolutions centred coordinate channels (models.conditioning), with
``"radial"`` also radial channels of given widths around the predicted centre; the inputs stay
the same. ``models.counting`` turns a generated image into the counts the
discriminator sees when training with the counting step.

The experts run batched: their weights are stacked along a leading expert dimension; each
event gathers its expert's weights and one grouped convolution (groups = events) runs the
whole batch (see expertsim.models.layers for the dispatch modes). There is no Python loop
over experts and no host-device synchronisation in a training step, and each event costs one
expert's FLOPs.
"""

from expertsim.models.experts import ExpertDiscriminator, ExpertGenerator
from expertsim.models.router import AuxRegressor, MixtureOfExperts, Router, gumbel_route

__all__ = ["AuxRegressor", "ExpertDiscriminator", "ExpertGenerator", "MixtureOfExperts",
           "Router", "gumbel_route"]
