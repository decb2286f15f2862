"""The pda worker side: the Prediction Difference Analysis engine (``worker.pda``),
the RQ job functions and the worker process."""
