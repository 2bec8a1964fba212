"""The version gate: SemVer bumps, security claims, class -> lane, windows and freezes,
the release decision and its plan digest.

Pure decisions over explicit inputs (and git read through `build.git`). May import `build`
and `trust`; never the config, the rollout, the agent or the CI glue.
"""
