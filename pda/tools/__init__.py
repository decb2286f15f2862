"""Tools built on the library and the engine: ``pda bench`` (:mod:`.bench`, with
:mod:`.bench_backends` and :mod:`.bench_incremental`), ``pda evaluate`` (:mod:`.evaluate`,
:mod:`.evaluate_cli`, :mod:`.evaluate_report`) and the drill-down measurements
(:mod:`.drilldown_bench`). They import torch; nothing in the service or the worker imports
them, and ``pda``'s CLI loads them only inside their subcommands."""
