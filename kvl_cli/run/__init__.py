"""The local run pipeline: inputs checked in order, the model loaded once, results written in input order
(image batches, video summaries and scene captions, --dry-run previews)."""
