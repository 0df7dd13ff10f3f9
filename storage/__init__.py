"""Where webvse's data lives: paths, Parquet tables and checkpoint files.

Depends on pandas and pyarrow (``tables``) and the standard library (``atomic``,
``checkpoints``, ``layout``); never on torch or Prefect. Submodules are imported
explicitly so that importing ``storage.checkpoints`` does not pull in pandas.
"""
