#!/usr/bin/env python3
"""Fails when README.md or docs/*.md names a source file that the repository does not have.

A name counts when it is written in backticks, has a folder (`engine/kv/pool.rs`) and ends in a
source-file extension. It names a file of the repository when a tracked file's path equals it or
ends with it at a folder boundary (docs often write paths relative to a crate), or, with `*` /
`**` / `{a,b}`, when a file matches the pattern. Links outside the repository (`../shared/...`,
URLs) and `path::item` / `path:line` suffixes are handled; nothing else is guessed.

    tools/check_doc_paths.py [--repo DIR]

Standard library only (CI runs it before any venv exists).
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import subprocess
import sys
from pathlib import Path

SOURCE_EXTENSIONS = (
    "rs", "py", "sh", "proto", "cu", "cuh", "c", "h", "toml", "yaml", "yml", "jinja",
)
BACKTICKED = re.compile(r"`([^`\n]+)`")
PATH_LIKE = re.compile(
    r"^[A-Za-z0-9_.*{}/,\-]+\.(?:" + "|".join(SOURCE_EXTENSIONS) + r")$"
)


def repository_files(repo: Path) -> list[str]:
    """Tracked files, and untracked ones git does not ignore (a change not yet committed)."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if (repo / line).exists()]


def candidate(text: str) -> str | None:
    """The path a backticked span names, or None when it is not a repository source path."""
    text = text.strip()
    if "://" in text or text.startswith(("../", "/", "~")) or " " in text:
        return None
    text = text.split("::", 1)[0]
    text = re.sub(r":\d+(-\d+)?$", "", text)
    text = text.removeprefix("./")
    if "/" not in text or not PATH_LIKE.match(text):
        return None
    return text


def expand_braces(pattern: str) -> list[str]:
    """`a/{b,c}.rs` -> [`a/b.rs`, `a/c.rs`] (nested braces are expanded in turn)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [
        expanded
        for choice in match.group(1).split(",")
        for expanded in expand_braces(head + choice + tail)
    ]


def names_a_file(path: str, files: list[str]) -> bool:
    """Whether some repository file is `path`, ends with `/path`, or matches it as a pattern."""
    for alternative in expand_braces(path):
        if "*" in alternative:
            suffix = "*/" + alternative
            if any(
                fnmatch.fnmatch(f, alternative) or fnmatch.fnmatch(f, suffix) for f in files
            ):
                continue
            return False
        if not any(f == alternative or f.endswith("/" + alternative) for f in files):
            return False
    return True


def missing_paths(repo: Path) -> list[tuple[str, int, str]]:
    """(document, line, path) for every backticked source path that names no file."""
    files = repository_files(repo)
    documents = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    missing = []
    for document in documents:
        for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), 1):
            for span in BACKTICKED.findall(line):
                path = candidate(span)
                if path is not None and not names_a_file(path, files):
                    missing.append((str(document.relative_to(repo)), number, path))
    return missing


def self_test() -> None:
    """The rules on a small made-up tree, so a broken checker cannot pass silently."""
    files = ["language-server/src/engine/kv/pool.rs", "kernels/src/cuda/flash.cu", "README.md"]
    assert names_a_file("engine/kv/pool.rs", files)
    assert names_a_file("language-server/src/engine/kv/pool.rs", files)
    assert not names_a_file("gine/kv/pool.rs", files)
    assert not names_a_file("engine/kv/sequence.rs", files)
    assert names_a_file("src/cuda/*.cu", files)
    assert names_a_file("engine/kv/{pool}.rs", files)
    assert not names_a_file("engine/kv/{pool,sequence}.rs", files)
    assert candidate("cli/src/commands/affinity.rs::size_compute_pool") == (
        "cli/src/commands/affinity.rs"
    )
    assert candidate("gateway/src/chat.rs:120") == "gateway/src/chat.rs"
    assert candidate("pool.rs") is None
    assert candidate("../shared/reference/video.md") is None
    assert candidate("dvd bench compare --model x/y.rs") is None
    assert candidate("docs/results/run.json") is None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    self_test()
    missing = missing_paths(args.repo)
    for document, number, path in missing:
        print(f"{document}:{number}: `{path}` names no file of the repository", file=sys.stderr)
    if missing:
        return 1
    print("every source path named in README.md and docs/*.md exists")
    return 0


if __name__ == "__main__":
    sys.exit(main())
