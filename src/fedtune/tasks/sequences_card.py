"""The task card of the `sequences` kind: which CSV columns are sequences and which are labels.

A card is a list of column specs (JSON dicts), the kind's label table: it travels as such in a job's label
table and a bundle's manifest. In a site folder it is `task.json`, `{"columns": [spec, ...]}`:

- `{"name": "heavy", "role": "sequence", "alphabet": "protein"}`: one or two sequence columns, one alphabet
  (`protein`: the 20 amino acids; `text`: any non-empty string);
- regression labels, one or more: `{"name": "kd", "role": "regression", "favourable": "lower", "units": "nM"}`
  (a row may leave a regression label empty: missing);
- or exactly one classification label: `{"name": "class", "role": "classification", "classes": ["a", "b"]}`
  (the class names in output order).

Everything a peer or a user hands in goes through `Card.from_dicts`, which names what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.sequences import DataError, normalise

CARD_FILE = "task.json"
ALPHABETS = {"protein": "antiberty", "text": "minilm"}   # alphabet -> default trunk
WARMUP = {"protein": "EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMS", "text": "The results were reported today."}
ROLES = ("sequence", "regression", "classification")
MAX_SEQUENCE_COLUMNS = 2
MAX_NAME = 64


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    role: str
    alphabet: str = ""               # sequence columns
    favourable: str = ""             # regression: "higher" or "lower"
    units: str = ""                  # regression
    classes: tuple[str, ...] = field(default_factory=tuple)   # classification, in output order

    @property
    def sign(self) -> int:
        return -1 if self.favourable == "lower" else 1

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v not in ("", ())}
        if self.classes:
            d["classes"] = list(self.classes)
        return d


def _text(d: dict, key: str, where: str, allowed=None, default: str = "") -> str:
    value = d.get(key, default)
    if not isinstance(value, str) or (allowed is not None and value not in allowed):
        want = f"one of {list(allowed)}" if allowed is not None else "a string"
        raise DataError(f"{where}: {key!r} must be {want}, got {value!r}")
    return value.strip()


def _spec(d, i: int) -> ColumnSpec:
    where = f"column spec {i + 1}"
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected an object, got {type(d).__name__}")
    unknown = set(d) - {"name", "role", "alphabet", "favourable", "units", "classes"}
    if unknown:
        raise DataError(f"{where}: unknown field(s) {sorted(unknown)}")
    name = _text(d, "name", where)
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise DataError(f"{where}: 'name' must be a printable column name of 1 to {MAX_NAME} characters")
    where = f"column {name!r}"
    role = _text(d, "role", where, ROLES)
    if role == "sequence":
        return ColumnSpec(name, role, alphabet=_text(d, "alphabet", where, tuple(ALPHABETS)))
    if role == "regression":
        return ColumnSpec(name, role, favourable=_text(d, "favourable", where, ("higher", "lower"), "higher"),
                          units=_text(d, "units", where))
    classes = d.get("classes")
    if (not isinstance(classes, list) or len(classes) < 2
            or not all(isinstance(c, str) and c.strip() and len(c) <= MAX_NAME for c in classes)):
        raise DataError(f"{where}: 'classes' must list at least two class names (strings), got {classes!r}")
    names = tuple(c.strip() for c in classes)
    if len(set(names)) != len(names):
        raise DataError(f"{where}: duplicate class names in {list(names)}")
    return ColumnSpec(name, role, classes=names)


@dataclass(frozen=True)
class Card:
    columns: tuple[ColumnSpec, ...]

    @classmethod
    def from_dicts(cls, specs) -> "Card":
        """A checked card from its column specs (a list of dicts); DataError says what is wrong."""
        if not isinstance(specs, list) or not specs:
            raise DataError("a task card needs a non-empty list of column specs")
        columns = tuple(_spec(d, i) for i, d in enumerate(specs))
        names = [c.name for c in columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"duplicate column spec(s) for {dup}: each column is named once")
        card = cls(columns)
        seqs, labels = card.sequence_columns, card.label_columns
        if not 1 <= len(seqs) <= MAX_SEQUENCE_COLUMNS:
            raise DataError(f"a task card names one or two sequence columns, found {len(seqs)}")
        if len({c.alphabet for c in seqs}) > 1:
            raise DataError("the sequence columns must share one alphabet (one trunk embeds them)")
        if not labels:
            raise DataError("a task card names at least one label column (regression or classification)")
        roles = {c.role for c in labels}
        if "classification" in roles and (len(labels) > 1 or len(roles) > 1):
            raise DataError("a task card has either regression labels or exactly one classification label")
        return card

    @classmethod
    def read(cls, folder: str | Path) -> "Card":
        """The card of a data folder (`task.json`), or of the folder holding a given `data.csv`."""
        folder = Path(folder)
        path = folder.parent / CARD_FILE if folder.is_file() else folder / CARD_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: no task card (task.json naming the sequence and label columns)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a readable JSON task card: {exc}") from None
        if not isinstance(doc, dict) or set(doc) != {"columns"}:
            raise DataError(f'{path}: a task card is {{"columns": [column spec, ...]}}')
        try:
            return cls.from_dicts(doc["columns"])
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / CARD_FILE
        path.write_text(json.dumps({"columns": self.to_dicts()}, indent=2) + "\n", encoding="utf-8")
        return path

    def to_dicts(self) -> list[dict]:
        return [c.to_dict() for c in self.columns]

    @property
    def sequence_columns(self) -> list[ColumnSpec]:
        return [c for c in self.columns if c.role == "sequence"]

    @property
    def label_columns(self) -> list[ColumnSpec]:
        return [c for c in self.columns if c.role != "sequence"]

    @property
    def classification(self) -> ColumnSpec | None:
        """The classification label, or None for a regression card."""
        return next((c for c in self.columns if c.role == "classification"), None)

    @property
    def alphabet(self) -> str:
        return self.sequence_columns[0].alphabet

    @property
    def default_trunk(self) -> str:
        return ALPHABETS[self.alphabet]

    def item_columns(self, item) -> list[str]:
        """A served item's sequences in the card's column order, prepared for the trunk (protein: normalised).
        An item is a dict by column name (what the API validated) or a tuple in column order."""
        seqs = [item[c.name] for c in self.sequence_columns] if isinstance(item, dict) else list(item)
        return [self.prepare(s) for s in seqs]

    def warmup_item(self) -> tuple[str, ...]:
        """A valid item of this card (the service predicts it once before serving)."""
        return (WARMUP[self.alphabet],) * len(self.sequence_columns)

    def prepare(self, seq: str) -> str:
        return normalise(seq) if self.alphabet == "protein" else seq.strip()

    @property
    def n_outputs(self) -> int:
        """Head outputs: one per regression label, or one per class."""
        cls_col = self.classification
        return len(cls_col.classes) if cls_col else len(self.label_columns)


def card_of(table) -> Card:
    """A checked Card from a label table: a Card, or a list of column specs (dicts or ColumnSpec objects)."""
    if isinstance(table, Card):
        return table
    rows = [c.to_dict() if isinstance(c, ColumnSpec) else c for c in table] if isinstance(table, (list, tuple)) else table
    return Card.from_dicts(rows)
