"""Helpers the tests share: real processes (servers.py, slow_worker.py), the service
tests' settings and requests (service.py), polling waits (waiting.py), the bad-file corpus
(corpus.py), hand-set toy models (toys.py), measured figures (figures.py), the browser
tests' constants (ui.py), the session's status recorder (statuses.py) and the memory probe
(memory_probe.py). Test modules import from here, never from one another or a conftest."""
