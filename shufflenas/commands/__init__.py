"""One module per concern; each exports ``COMMANDS``."""
