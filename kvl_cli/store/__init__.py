"""Getting a model: the catalog, the hub and its errors, safe names and paths, the pull."""
