"""Data: loaders (FLAb, Financial PhraseBank), validation, site splits, standardisation, synthetic data."""

from .check import CheckReport, Problem, check_folder, check_site, kinds_present
from .flab import FITNESS_TASKS, Assay, FitnessData, load_assays, load_flab, ordered_tasks, write_flab
from .fpb import SENTIMENT_LABELS, SentimentData, load_fpb, write_fpb
from .sequences import AMINO_ACIDS, MAX_CHAIN_LENGTH, DataError, chain_problem, normalise
from .split import site_names, split_fitness_sites, split_sentiment_sites, train_val_split
from .stats import AssayStats, moments
from .synthetic import SYNTHETIC_ASSAYS, synthetic_fitness, synthetic_sentiment

__all__ = [
    "AMINO_ACIDS", "FITNESS_TASKS", "MAX_CHAIN_LENGTH", "SENTIMENT_LABELS", "SYNTHETIC_ASSAYS",
    "Assay", "AssayStats", "CheckReport", "DataError", "FitnessData", "Problem", "SentimentData", "chain_problem",
    "check_folder", "check_site", "kinds_present", "load_assays", "load_flab", "load_fpb", "moments", "normalise",
    "ordered_tasks", "site_names", "split_fitness_sites", "split_sentiment_sites", "synthetic_fitness",
    "synthetic_sentiment", "train_val_split", "write_flab", "write_fpb",
]
