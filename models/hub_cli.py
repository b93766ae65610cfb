"""The command that fetches weights, as the huggingface_hub installed here spells it.

huggingface_hub 0.34 introduced `hf` beside `huggingface-cli`, and 1.0 removed `huggingface-cli`:
messages name the command the installed hub provides (read from its console scripts), so what a
user copies runs.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def hub_command() -> str:
    """`hf` when the installed huggingface_hub provides it (or provides neither), else `huggingface-cli`."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        scripts = {e.name for e in distribution("huggingface_hub").entry_points if e.group == "console_scripts"}
    except PackageNotFoundError:
        scripts = set()
    return "huggingface-cli" if "huggingface-cli" in scripts and "hf" not in scripts else "hf"


def download_command(repo: str, *files: str) -> str:
    """The command that puts `repo` (or just `files` of it) into the Hugging Face cache."""
    return " ".join([hub_command(), "download", repo, *files])
