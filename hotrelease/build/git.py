"""What git knows: the source state of a build (commit, ref, dirtiness, tags at HEAD),
release tags and trailers, through GitPython's `repo.git` (the git CLI).

`git for-each-ref` lists 10,000 tags in a few milliseconds; iterating `repo.tags` builds a
Python object per ref and is several times slower, so the tag list is read as plain text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import semver

from hotrelease.errors import GitError
from hotrelease.trust.versions import version_from_tag

_TRAILER_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*)\s*:\s*(.+?)\s*$")
_SIGNATURE_MARKERS = ("-----BEGIN PGP SIGNATURE-----", "-----BEGIN SSH SIGNATURE-----")


@dataclass(frozen=True)
class Trailer:
    key: str
    value: str


def open_repo(path: Path) -> Any | None:
    """The repository containing `path`, or None when it is not in git."""
    import git  # lazy: GitPython costs ~60 ms to import

    try:
        return git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def _run(repo: Any, *args: str) -> str:
    import git

    try:
        return str(repo.git.execute(["git", *args]))
    except git.GitCommandError as exc:
        raise GitError(f"git {args[0]} failed: {str(exc.stderr).strip()}") from None


_LIST_TAGS = ("for-each-ref", "--format=%(refname:strip=2)", "refs/tags")


def list_tags(repo: Any) -> list[str]:
    return _run(repo, *_LIST_TAGS).splitlines()


class GitView:
    """A repository whose tag list is already being read in the background.

    With thousands of loose refs, `git for-each-ref` spends most of its time reading ref
    files; starting it before the rest of the inputs are gathered lets git work while Python
    imports modules and reads the config (the CLI opens the view first thing).
    """

    def __init__(self, repo: Any) -> None:
        self.repo = repo
        self._pending: Any = repo.git.execute(["git", *_LIST_TAGS], as_process=True)
        self._tags: list[str] | None = None

    def tags(self) -> list[str]:
        if self._tags is None:
            proc = self._pending.proc
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise GitError(f"git for-each-ref failed: {err.decode(errors='replace').strip()}")
            self._tags = out.decode("utf-8", errors="replace").splitlines()
        return self._tags


def open_view(path: Path) -> GitView | None:
    """Open the repository containing `path` and start listing its tags; None if not in git."""
    repo = open_repo(path)
    return None if repo is None else GitView(repo)


def tag_message(repo: Any, tag: str) -> str | None:
    """The message of an annotated tag; None for a lightweight tag.

    `git cat-file` resolves the one ref directly; `for-each-ref refs/tags/NAME` would read
    every loose tag ref to find it (tens of milliseconds with 10,000 loose tags).
    """
    out = _run(repo, "cat-file", "-p", f"refs/tags/{tag}")
    if not out.startswith("object "):  # a lightweight tag points at a commit: "tree ..."
        return None
    _, _, message = out.partition("\n\n")
    return message


def commit_message(repo: Any, rev: str) -> str | None:
    """The full message of the commit `rev` points to; None if it does not resolve."""
    import git

    try:
        return str(repo.git.execute(["git", "log", "-1", "--format=%B", f"{rev}^{{commit}}",
                                     "--"]))
    except git.GitCommandError:
        return None


def parse_trailers(message: str | None) -> list[Trailer]:
    """Trailers of the last paragraph (`Key: value` lines), as `git interpret-trailers`
    reads them; signature blocks of signed tags are cut off first."""
    if not message:
        return []
    for marker in _SIGNATURE_MARKERS:
        message = message.split(marker, 1)[0]
    paragraphs = [p for p in re.split(r"\n\s*\n", message.strip()) if p.strip()]
    if len(paragraphs) < 2:  # the subject line alone is never a trailer block
        return []
    out: list[Trailer] = []
    for line in paragraphs[-1].splitlines():
        match = _TRAILER_RE.match(line)
        if match is None:
            if line[:1].isspace() and out:  # continuation line
                out[-1] = Trailer(out[-1].key, f"{out[-1].value} {line.strip()}")
                continue
            return []
        out.append(Trailer(match.group(1), match.group(2)))
    return out


def trailer_values(message: str | None, key: str) -> list[str]:
    return [t.value for t in parse_trailers(message) if t.key.lower() == key.lower()]


# --- the source state of a build ----------------------------------------------------------


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


def read_source_state(path: Path, ignore: list[Path] | None = None) -> SourceState:
    """Inspect the repository containing `path`; an empty state if it is not in git."""
    import git

    repo = open_repo(path)
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
