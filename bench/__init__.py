"""`make bench`: end-to-end throughput of survey-worker against a local SMTP sink.

`python -m bench.run --help` lists the options. The run starts embedded Postgres and Redis
under `.data/bench`, Postfix's `smtp-sink` (or a built-in sink), generates and imports a
campaign, sends it with real worker processes, verifies what the sink received and prints
the figures next to the targets of issue 5.
"""
