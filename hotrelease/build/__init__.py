"""Building a release: run the build commands, bundle, checksum, read Go ABI facts and git.

May import `trust` (and `errors`). Never imports the gate, the config, the rollout or the CI
glue: what a build needs from the project config arrives as `build.settings` objects.
"""
