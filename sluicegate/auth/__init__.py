"""Bearer credentials besides the gateway's own API keys: JWTs from an identity provider (`auth.jwt`).

Kept import-free: `stages.base` imports `auth.jwks` for the shared JWKS cache, which imports PyJWT
(and with it `cryptography`) only when it parses a key; `auth.jwt` imports them at once and is
itself imported only when `jwt_issuers` are configured.
"""
