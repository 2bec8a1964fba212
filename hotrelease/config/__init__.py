"""The project config (`hotrelease.toml`) read into typed objects, and the path-aware TOML
reader that every config file of hotrelease (the agent's too) is read with.

Sits above `gate` (it builds a `Policy` and a `Schedule`) and below `rollout`. The node
agent may import `config.reader` only.
"""
