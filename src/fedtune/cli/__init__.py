"""The one `fedtune` command. Each module below registers the subcommands of one area.

Modules here only parse arguments and call into the packages; heavy imports (torch, nvflare)
happen inside the commands so that `fedtune --help` stays fast.
"""

import importlib
import logging
import os

import typer

app = typer.Typer(
    name="fedtune",
    help="Federated fine-tuning of transformer trunks with NVIDIA FLARE (provisioned, mTLS), and serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One module per area; a module that is absent (not written yet) is skipped.
_AREAS = ("local", "check", "fl", "pki", "privacy", "compare", "serve", "predict", "demo")
for _name in _AREAS:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:  # pragma: no cover - only while an area is missing
        if exc.name != f"{__name__}.{_name}":
            raise


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=os.environ.get("FEDTUNE_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the admin session's connection chatter; the server and site processes keep their full logs
    logging.getLogger("nvflare").setLevel(os.environ.get("FEDTUNE_NVFLARE_LOG_LEVEL", "WARNING").upper())
    app()
