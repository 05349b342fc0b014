"""Building the synthetic grid: sources (atmospheres, line lists), synthesis backends, the store."""
