"""Operating the worker: `/ops` and `/metrics` on the web app (`app`), the `/ops` users'
password hashes (`passwords`), what `/ops` reads (`store`) and draws (`charts`)."""
