"""The egress door: a forward proxy (`egress:` config) that blocks, tunnels or intercepts the
organisation's outbound calls to AI services, and hands intercepted calls to the one pipeline.

`config` (settings), `hosts` (the known AI hosts and the per-destination decision), `policy` (the
config compiled), `door` (the listener of one process), `proxy` (a client connection and its
decision), `tunnel` and `forward` (allowed traffic), `ca` (leaf certificates from the
organisation's CA), `intercept` (TLS ended into the gateway's own protocol), `events` (audit),
`report` (`sluicegate report shadow-ai`).
"""
