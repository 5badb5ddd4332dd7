"""`tinygemma prepare | data | train | generate | eval | export | quickstart`.

Each command's arguments live in its own `add_<command>` function; the work lives in
the concern's module. User errors (TinyGemmaError) print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys

from tinygemma import __version__
from tinygemma.errors import TinyGemmaError


# ---------------------------------------------------------------- prepare / data (data.py)
def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tokenise text into train.bin / validation.bin + meta.json")
    p.set_defaults(func=lambda a: _todo("prepare"))


def add_data(sub) -> None:
    p = sub.add_parser("data", help="inspect prepared data")
    p.set_defaults(func=lambda a: _todo("data"))


# ---------------------------------------------------------------- train (train.py)
def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on prepared data")
    p.set_defaults(func=lambda a: _todo("train"))


# ---------------------------------------------------------------- generate / eval / export (generate.py, evaluate.py, hf.py)
def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="write text with a trained model (KV-cache sampling)")
    p.set_defaults(func=lambda a: _todo("generate"))


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="loss, perplexity and bits per byte on a split or a text file")
    p.set_defaults(func=lambda a: _todo("eval"))


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to Hugging Face format")
    p.set_defaults(func=lambda a: _todo("export"))


# ---------------------------------------------------------------- quickstart (quickstart.py)
def add_quickstart(sub) -> None:
    p = sub.add_parser("quickstart", help="the whole pipeline offline: data, train, sample stories")
    p.set_defaults(func=lambda a: _todo("quickstart"))


# ---------------------------------------------------------------- dispatcher
def _todo(name: str) -> int:
    raise TinyGemmaError(f"`tinygemma {name}` is not implemented yet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinygemma",
        description="Train Gemma 3 language models from scratch on TinyStories or any text.",
    )
    parser.add_argument("--version", action="version", version=f"tinygemma {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (add_prepare, add_data, add_train, add_generate, add_eval, add_export, add_quickstart):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TinyGemmaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
