"""shufflenas: hardware-aware NAS over the ShuffleNet design space (command-line entry point)."""

__version__ = "0.1.0"
