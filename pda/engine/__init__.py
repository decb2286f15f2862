"""The engine: pure tensor code (torch). No Redis, HTTP, files or settings inside."""
