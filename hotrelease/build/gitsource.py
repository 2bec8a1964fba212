"""What git knows about the source: commit, ref, dirtiness, release tags (GitPython)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import semver

from hotrelease.errors import GitError
from hotrelease.trust.versions import version_from_tag


@dataclass
class SourceState:
    commit: str | None = None
    ref: str | None = None
    dirty: bool = False
    dirty_paths: list[str] = field(default_factory=list)
    commit_time: int | None = None
    head_versions: list[semver.Version] = field(default_factory=list)

    @property
    def in_git(self) -> bool:
        return self.commit is not None


def _open_repo(path: Path):  # -> git.Repo | None
    import git  # lazy: GitPython costs ~100 ms to import

    try:
        return git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def read_source_state(path: Path, ignore: list[Path] | None = None) -> SourceState:
    """Inspect the repository containing `path`; an empty state if it is not in git."""
    import git

    repo = _open_repo(path)
    if repo is None:
        return SourceState()
    try:
        head = repo.head.commit
    except ValueError:
        raise GitError(f"{repo.working_tree_dir}: repository has no commits yet") from None
    root = Path(repo.working_tree_dir or path).resolve()
    ignored = []
    for p in ignore or []:
        try:
            ignored.append(Path(p).resolve().relative_to(root).as_posix().rstrip("/") + "/")
        except ValueError:
            pass
    try:
        status = repo.git.status("--porcelain", "-z", "--untracked-files=all")
    except git.GitCommandError as exc:
        raise GitError(f"git status failed: {exc.stderr.strip()}") from None
    dirty_paths = []
    for entry in status.split("\0"):
        if len(entry) > 3:
            rel = entry[3:]
            if not any(rel.startswith(prefix) for prefix in ignored):
                dirty_paths.append(rel)
    if repo.head.is_detached:
        ref = None
    else:
        ref = repo.head.reference.path  # refs/heads/main
    tags = repo.git.tag("--points-at", "HEAD").split()
    versions = sorted(v for v in (version_from_tag(t) for t in tags) if v is not None)
    if versions:
        ref = ref or f"refs/tags/{tags[0]}"
    return SourceState(commit=head.hexsha, ref=ref, dirty=bool(dirty_paths),
                       dirty_paths=dirty_paths, commit_time=int(head.committed_date),
                       head_versions=versions)
