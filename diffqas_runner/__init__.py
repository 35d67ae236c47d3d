"""diffqas-runner: a config-driven experiment runner for DiffQAS in Quantum-Train (README.md).

`__version__` is the one place the version is written (pyproject.toml reads it): a summary names
the version of the code that ran, also from a source tree on PYTHONPATH beside an installed copy.
"""

__version__ = "0.3.0.dev3"
