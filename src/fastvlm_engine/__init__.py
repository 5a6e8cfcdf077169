"""FastVLM Descriptor Engine: batched FastVLM inference for images and short videos.

Importing the package has no side effects and does not import torch.
"""

__version__ = "0.1.0"
