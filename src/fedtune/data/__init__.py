"""Data: loaders (FLAb, Financial PhraseBank), validation, site splits, standardisation, synthetic data."""

from .flab import FITNESS_TASKS, Assay, FitnessData, load_assays, load_flab, ordered_tasks, write_flab
from .fpb import SENTIMENT_LABELS, SentimentData, load_fpb, write_fpb
from .sequences import AMINO_ACIDS, MAX_CHAIN_LENGTH, DataError, chain_problem, normalise
from .site import KINDS, load_site, load_site_data, prepare_sites, write_site
from .split import site_names, split_fitness_sites, split_sentiment_sites, train_val_split
from .stats import AssayStats, moments
from .synthetic import SYNTHETIC_ASSAYS, synthetic_fitness, synthetic_sentiment

__all__ = [
    "AMINO_ACIDS", "FITNESS_TASKS", "KINDS", "MAX_CHAIN_LENGTH", "SENTIMENT_LABELS", "SYNTHETIC_ASSAYS",
    "Assay", "AssayStats", "DataError", "FitnessData", "SentimentData", "chain_problem", "load_assays",
    "load_flab", "load_fpb", "load_site", "load_site_data", "moments", "normalise", "ordered_tasks", "prepare_sites",
    "site_names", "split_fitness_sites", "split_sentiment_sites", "synthetic_fitness", "synthetic_sentiment",
    "train_val_split", "write_flab", "write_fpb", "write_site",
]
