"""A job's life: its record, its store in Redis, the queue, and its transitions."""
