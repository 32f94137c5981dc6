"""lime's ``lime.utils``."""
