"""Readers for the standard dataset formats (Karpathy JSON, VSE++ precomp) and a synthetic one."""
