"""Method layer: model-level logic (hooks, batching) on top of the ops."""
