"""The rollout: stage plans, the Publisher (upload, activate, bake, abort through the
agents), the release session against a configured fleet, the fleet baseline, a local fleet.

May import `config`, `gate`, `build`, `trust` and the agent client; no UI (the progress
display and tables are `commands.render`).
"""
