"""fedtune: federated fine-tuning of pretrained transformer trunks with NVIDIA FLARE, and serving.

Data flows one way: data -> models -> train -> fl -> bundle -> serve.
"""

__version__ = "0.1.0"
