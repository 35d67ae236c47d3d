"""`python -m diffqas_runner.manual [NAME]`: the documentation an installed package carries, no checkout needed.

Without NAME: the manual (README.md: in a checkout the file itself, in a wheel the package's
description, which is the README). NAME = design, results or benchmarks: that file of docs/,
which the wheel ships as diffqas_runner/docs/. The last line says where the docs are.
"""

from __future__ import annotations

import argparse
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = ("design", "results", "benchmarks")


def docs_dir() -> Path:
    """diffqas_runner/docs in an installed wheel, the checkout's docs/ otherwise (editable installs)."""
    shipped = HERE / "docs"
    return shipped if shipped.is_dir() else HERE.parent / "docs"


def readme() -> str:
    checkout = HERE.parent / "README.md"
    if checkout.is_file():
        return checkout.read_text()
    return metadata.metadata("diffqas-runner").get_payload() or ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the installed package's documentation.")
    parser.add_argument("name", nargs="?", choices=DOCS, help="a file of docs/ (default: the manual, README.md)")
    args = parser.parse_args(argv)
    print(readme() if args.name is None else (docs_dir() / f"{args.name}.md").read_text())
    print(f"(docs: {docs_dir()}: {', '.join(f'{d}.md' for d in DOCS)}; `python -m diffqas_runner.manual NAME` prints one)")


if __name__ == "__main__":
    main()
