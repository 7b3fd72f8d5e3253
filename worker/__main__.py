"""`python -m worker` is the `survey-worker` command."""

from worker.cli import main

main()
