"""Pieces every stage uses: dataclass arguments on the command line (`arguments`), the loss plot (`plot`)."""
