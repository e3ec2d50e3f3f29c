"""Financial PhraseBank: latin-1 text files of `sentence@label` lines, one file per agreement level."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .sequences import DataError

SENTIMENT_LABELS = ("negative", "neutral", "positive")
AGREEMENT_FILES = {"50": "Sentences_50Agree.txt", "66": "Sentences_66Agree.txt",
                   "75": "Sentences_75Agree.txt", "all": "Sentences_AllAgree.txt"}
SITE_FILE = "Sentences.txt"   # what a site folder holds (`fedtune prepare-data` writes it)


@dataclass
class SentimentData:
    texts: list[str]
    labels: np.ndarray   # int64 [N], index into SENTIMENT_LABELS

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx) -> "SentimentData":
        idx = np.asarray(idx, dtype=np.int64)
        return SentimentData([self.texts[i] for i in idx], self.labels[idx])

    # the samples protocol (shared with the other data containers): split unit, lengths, model inputs, union
    def split_ids(self) -> list[str]:
        """The split unit: the sentence."""
        return list(self.texts)

    def lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.texts])

    def inputs(self, idx) -> tuple[list[str]]:
        """What the model embeds for rows `idx`: (texts,)."""
        return ([self.texts[i] for i in idx],)

    @classmethod
    def concat(cls, parts: list["SentimentData"]) -> "SentimentData":
        return cls([t for p in parts for t in p.texts], np.concatenate([p.labels for p in parts]))

    def digest(self) -> str:
        h = hashlib.sha256()
        for t, y in zip(self.texts, self.labels):
            h.update(f"{t}@{int(y)}\n".encode())
        return h.hexdigest()


def site_file(folder: str | Path) -> Path:
    """The FPB file a site reads: `Sentences.txt` in the folder, else the original FPB files' 50Agree one;
    `folder` may also be the file itself."""
    folder = Path(folder)
    if not folder.is_dir():
        return folder
    own = folder / SITE_FILE
    return own if own.exists() else folder / AGREEMENT_FILES["50"]


def fpb_path(path: str | Path, agreement: str = "50") -> Path:
    """A file, or a folder holding the FPB files (pick by agreement level 50/66/75/all)."""
    path = Path(path)
    if path.is_dir():
        key = str(agreement).lower().removesuffix("agree")
        if key not in AGREEMENT_FILES:
            raise DataError(f"unknown agreement level {agreement!r}; choose one of {sorted(AGREEMENT_FILES)}")
        path = path / AGREEMENT_FILES[key]
    if not path.exists():
        raise DataError(f"{path}: no such file")
    return path


def iter_fpb_lines(path: Path):
    """Yield (line number, (sentence, label index) or None, problem or None) for every non-blank line of an
    FPB file. The one definition of a valid line, shared by the loader and `check_site`."""
    try:
        with path.open(encoding="latin-1") as f:
            for i, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                text, sep, label = line.rpartition("@")
                label = label.strip().lower()
                if not sep or label not in SENTIMENT_LABELS:
                    yield i, None, (f"expected 'sentence@label' with label in {SENTIMENT_LABELS}, "
                                    f"got {line[-40:]!r}")
                elif not text.strip():
                    yield i, None, "empty sentence"
                else:
                    yield i, (text.strip(), SENTIMENT_LABELS.index(label)), None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from None


def load_fpb(path: str | Path, agreement: str = "50") -> SentimentData:
    """Read an FPB file; a sentence that occurs more than once is kept once (its first label), so a
    duplicate can never end up on both sides of a split."""
    path = fpb_path(path, agreement)
    texts, labels, seen = [], [], set()
    for i, parsed, problem in iter_fpb_lines(path):
        if problem:
            raise DataError(f"{path}: line {i}: {problem}")
        text, label = parsed
        if text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(label)
    return SentimentData(texts, np.asarray(labels, dtype=np.int64))


def write_fpb(data: SentimentData, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="latin-1", errors="replace", newline="\r\n") as f:
        for t, y in zip(data.texts, data.labels):
            f.write(f"{t}@{SENTIMENT_LABELS[int(y)]}\n")
    return path
