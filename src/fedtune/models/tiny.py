"""Tiny randomly initialised trunks saved as local Hugging Face folders: for tests, CI and benchmarks
of the plumbing (they take the same code path as ESM-2 / AMPLIFY folders a user points at)."""

from __future__ import annotations

from pathlib import Path

from .trunk import resolve_source

AMINO_ACID_TOKENS = list("LAGVSERTIDPKQNFYMHWC")


def make_tiny_trunk(folder: str | Path, kind: str = "antibody", hidden: int = 32, layers: int = 2,
                    seed: int = 0) -> Path:
    """kind: "antibody" (BERT with AntiBERTy's vocabulary), "text" (BERT with MiniLM's vocabulary) or
    "esm" (an ESM-2-style encoder with its own residue vocabulary)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer, EsmConfig, EsmModel, EsmTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                  intermediate_size=2 * hidden, max_position_embeddings=320)
    if kind == "antibody":
        _, vocab = resolve_source("antiberty")
        tok = BertTokenizer(vocab=str(vocab), do_lower_case=False)
        model = BertModel(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **common),
                          add_pooling_layer=False)
    elif kind == "text":
        tok = AutoTokenizer.from_pretrained(str(resolve_source("minilm")[0]))
        model = BertModel(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **common),
                          add_pooling_layer=False)
    elif kind == "esm":
        vocab_file = folder / "vocab.txt"
        vocab_file.write_text("\n".join(["<cls>", "<pad>", "<eos>", "<unk>", *AMINO_ACID_TOKENS, "<mask>"]) + "\n")
        tok = EsmTokenizer(vocab_file=str(vocab_file))
        model = EsmModel(EsmConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                   mask_token_id=tok.mask_token_id, position_embedding_type="rotary",
                                   **common), add_pooling_layer=False)
    else:
        raise ValueError(f"unknown tiny trunk kind {kind!r}")
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
