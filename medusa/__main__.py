"""`python -m medusa COMMAND ...`: the same as the `medusa` console script."""
import sys

from medusa.cli import main

sys.exit(main())
