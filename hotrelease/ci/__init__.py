"""GitLab CI glue and onboarding: child pipelines, `hotrelease init`, `hotrelease demo`.

May import every room below it; only `commands` imports it.
"""
