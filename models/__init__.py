"""What the node and the training package share: preprocessing, network, checkpoint format.

Depends on torch, numpy and pydicom only (an import-linter contract keeps it so).
"""

__version__ = "0.1.0"
