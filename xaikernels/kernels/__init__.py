"""Kernels (bottom layer).  Never import the layers above."""
