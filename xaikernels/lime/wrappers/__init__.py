"""lime's ``lime.wrappers``."""
