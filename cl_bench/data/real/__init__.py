"""The real data world: dataset files, sources, splits, few-shot manifests and the decode cache."""
