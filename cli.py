"""`python cli.py …` — the same as the `magvit` console script."""
from magvit_pl.run.cli import main

if __name__ == "__main__":
    main()
