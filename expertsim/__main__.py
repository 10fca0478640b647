"""``python -m expertsim`` (and ``torchrun -m expertsim train ...``)."""

from expertsim.cli import main

if __name__ == "__main__":
    main()
