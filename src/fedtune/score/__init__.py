"""`fedtune predict`: score a file (CSV/TSV, FASTA, text, Parquet) with a bundle, streaming, resumable.

inputs (readers, row numbers, bad rows), outputs (the output file and its checkpoint), parquet (Parquet
input and output, pyarrow), run (the loop over
chunks through the service's own batcher and the kind's REST side: `serve.kinds.KindApi`). This package uses
serve/ (batcher, cache, kinds' APIs); serve/ never imports it.
"""
