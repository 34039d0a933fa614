"""The egress door: a forward proxy (`egress:` config) that blocks, tunnels or intercepts the
organisation's outbound calls to AI services, and hands intercepted calls to the one pipeline.

`config` (settings), `hosts` (the known AI hosts and the per-destination decision), `ca` (leaf
certificates signed by the organisation's CA), `proxy` (the listener), `tunnel` (byte relay),
`intercept` (TLS termination into the gateway's own protocol), `events` (audit), `report`.
"""
