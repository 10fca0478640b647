"""``python -m expertsim`` (and ``torchrun -m expertsim train ...``)."""

from expertsim.cli import main

main()
