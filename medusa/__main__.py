"""`python -m medusa COMMAND ...`: the same as the `medusa` console script."""
from medusa.cli import console

console()
