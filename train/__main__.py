"""``python -m train`` entry point."""

from train.cli import main

main()
