"""Pieces every stage uses: dataclass options on the command line (`arguments`), the loss plot (`plot`)."""
