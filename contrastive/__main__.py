"""``python -m contrastive``: what ``torchrun -m contrastive run SPEC`` executes on every rank."""

from contrastive.cli import main

if __name__ == "__main__":
    main()
