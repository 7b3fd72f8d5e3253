"""Operating the worker: `/ops` and `/metrics` on the web app (`app`), what `/ops` reads
(`store`) and draws (`charts`). The `/ops` users' password hashes are `worker.passwords`."""
