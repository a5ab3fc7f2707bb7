"""emarray's operators; each one is a per-block function run by :mod:`emarray.engine`."""
