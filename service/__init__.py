"""The pda HTTP API (FastAPI): submit explanations, follow jobs, fetch results."""
