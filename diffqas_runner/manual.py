"""`python -m diffqas_runner.manual [NAME]`: the documentation an installed package carries, no checkout needed.

Without NAME: the manual (README.md: in a checkout the file itself, in a wheel the package's
description, which is the README). NAME = design, results or benchmarks: that file of docs/,
which the wheel ships as diffqas_runner/docs/. The last line says where the docs are.
"""

from __future__ import annotations

import argparse
import re
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
    return for_installed(metadata.metadata("diffqas-runner").get_payload() or "")


INSTALLED_START = """## Quick start (the installed package)

```bash
diffqas-run task=bessel logger=none          # the paper's Bessel DiffQAS run (~10-15 s)
diffqas-run task=bessel debug=smoke logger=none   # three steps: checks the install in seconds
python -m diffqas_runner.manual design       # the design notes (also: results, benchmarks)
```

The `make` targets and the test suite belong to the source repository (a checkout), not to the
installed package.

"""


def for_installed(text: str) -> str:
    """The README as a wheel user reads it: the quick start speaks of the installed package (no
    Makefile, no tests there), and the links to files a wheel does not carry name where they are."""
    for title, replacement in (("## Quick start", INSTALLED_START), ("## Development", INSTALLED_DEVELOPMENT)):
        start = text.find(title)
        end = text.find("\n## ", start + 1) if start >= 0 else -1
        if start >= 0:
            text = text[:start] + replacement + ("" if end < 0 else text[end + 1 :])
    names = "|".join(DOCS)
    text = re.sub(rf"\[([^\]]+)\]\(docs/({names})\.md[^)]*\)", r"\1 (`python -m diffqas_runner.manual \2`)", text)
    return text.replace("[CHANGELOG.md](CHANGELOG.md)", "CHANGELOG.md (in the source repository)")


INSTALLED_DEVELOPMENT = """## Development

Tests, benchmarks and CI live in the source repository; this package carries the runner, its
configs and its docs.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the installed package's documentation.")
    parser.add_argument("name", nargs="?", choices=DOCS, help="a file of docs/ (default: the manual, README.md)")
    args = parser.parse_args(argv)
    print(readme() if args.name is None else (docs_dir() / f"{args.name}.md").read_text())
    print(f"(docs: {docs_dir()}: {', '.join(f'{d}.md' for d in DOCS)}; `python -m diffqas_runner.manual NAME` prints one)")


if __name__ == "__main__":
    main()
