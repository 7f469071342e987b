"""Models: the catalog, verified downloads, CPU-prepared copies, providers and the warm session pool."""
