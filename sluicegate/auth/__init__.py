"""Bearer credentials besides the gateway's own API keys: JWTs from an identity provider (`auth.jwt`).

Kept import-free: `stages.base` imports `auth.jwks` for the shared JWKS cache.
"""
