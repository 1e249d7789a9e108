"""Who may do what: API keys (hashed in the store), tenants' namespaces, scopes, rate limits.

- `keys`: the key format, hashing and records; `keyring`: the keys in force, cached in the process.
- `namespace`: a tenant's streams and templates as the registry and the store name them.
- `guard`: the ASGI middleware that authenticates every request and checks its scope.
- `limiter`: per-key token buckets and per-tenant observation rates (the ``limits`` library).
"""
