"""The trust core: what hotrelease accepts as signed, valid and safe.

Canonical JSON, Ed25519 keys and envelopes, the release manifest, security labels,
approvals, SemVer parsing, signature and bundle verification, archive inspection and safe
extraction. No network, no git, no config files. Imports only `hotrelease.errors` and its
own modules; every other room may import it (the node agent included).
"""
