"""python scripts/aggregate.py SWEEP_DIR: results.csv, results.md and PNG plots of a sweep (CONTRACT.md)."""

from diffqas_runner.aggregate import main

if __name__ == "__main__":
    main()
