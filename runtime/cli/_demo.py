"""`hoard demo` (placeholder until written)."""
from ._main import cli

@cli.command()
def demo() -> None:
    """Run the demo."""
