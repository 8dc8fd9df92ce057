"""`python -m stages ...` runs the cnnlab command line."""

from stages.cli import main

main()
