"""ExpertSim: fast generative simulation of the ALICE Zero Degree Calorimeters."""

__version__ = "0.1.0"
