"""Pure-torch reference twins of every kernel: same signatures, the oracle in tests."""
