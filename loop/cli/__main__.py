"""`python -m loop.cli` runs the CLI (the same as the `loop` script)."""

from loop.cli import main

if __name__ == "__main__":
    main()
