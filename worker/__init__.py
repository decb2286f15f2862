"""The pda worker side: the RQ job functions and the worker process, around the engine
(:mod:`pda.engine`), which they import."""
