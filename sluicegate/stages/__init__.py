"""Pipeline stages, one module each; `base` holds the contract and registry."""
