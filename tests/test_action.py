"""The composite Action (action.yml), run step by step the way the runner runs it.

Nothing of the Action is re-implemented here: each step's `run:` is executed as written with
`bash --noprofile --norc -eo pipefail` (the runner's `shell: bash`), in an environment built the
way the runner builds it (the step's `env:` with its expressions evaluated, GITHUB_ACTION_PATH,
GITHUB_WORKSPACE, a GITHUB_OUTPUT file per step, RUNNER_TEMP). The only thing evaluated here is
the small expression language of `env:`, `if:` and `outputs:`; a `run:` line holding an
expression fails the test, since that is how an input would reach a shell unquoted.

The workspace is a clone of a local bare repository, so the legacy commit-and-push really
happens; the generate step joins the session's Ray instance with a scripted test model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from cluster.output.github_output import OUTPUT_NAMES, parse_outputs
from tests.helpers import read_json, scripted_registry

ROOT = Path(__file__).resolve().parent.parent
ACTION = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
VENV_BIN = Path(sys.executable).parent  # the test session's virtualenv, which holds `multi-image`
EXPECTED_OUTPUTS = {*OUTPUT_NAMES, "comparison-report"}


# --- the runner's expression language, as much of it as action.yml uses --------------------

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<op>==|!=|&&|\|\||!|\(|\))|(?P<word>[A-Za-z_][\w.-]*))")


class Expression:
    """`inputs.x`, `steps.id.outputs.x`, `github.action_path`, `runner.temp`, '...' literals,
    true/false/null, `==` `!=` (case-insensitive on strings, as the runner compares), `!`, `&&`
    and `||` (returning an operand, as the runner does) and parentheses."""

    def __init__(self, text: str, context: dict):
        self.context = context
        self.tokens: list[tuple[str, str]] = []
        position, text = 0, text.strip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if not match or match.end() == position:
                raise ValueError(f"cannot evaluate {text!r} at {text[position:]!r}")
            kind = match.lastgroup
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.at = 0

    def evaluate(self):
        value = self._or()
        if self.at != len(self.tokens):
            raise ValueError(f"trailing tokens {self.tokens[self.at:]}")
        return value

    def _peek(self):
        return self.tokens[self.at] if self.at < len(self.tokens) else (None, None)

    def _take(self, op: str) -> bool:
        if self._peek() == ("op", op):
            self.at += 1
            return True
        return False

    def _or(self):
        value = self._and()
        while self._take("||"):
            right = self._and()
            value = value if truthy(value) else right
        return value

    def _and(self):
        value = self._compare()
        while self._take("&&"):
            right = self._compare()
            value = right if truthy(value) else value
        return value

    def _compare(self):
        value = self._unary()
        for op in ("==", "!="):
            if self._take(op):
                equal = _normal(value) == _normal(self._unary())
                return equal if op == "==" else not equal
        return value

    def _unary(self):
        if self._take("!"):
            return not truthy(self._unary())
        if self._take("("):
            value = self._or()
            assert self._take(")"), "missing )"
            return value
        kind, text = self._peek()
        self.at += 1
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "word":
            literals = {"true": True, "false": False, "null": None}
            return literals[text] if text in literals else self._lookup(text)
        raise ValueError(f"unexpected {text!r}")

    def _lookup(self, path: str):
        head, *rest = path.split(".")
        if head not in self.context:  # functions (success(), ...) and other contexts are not used
            raise ValueError(f"unsupported context {path!r}")
        value = self.context[head]
        for part in rest:
            if head == "inputs" and part not in value:
                raise ValueError(f"action.yml reads an undeclared input {path!r}")
            value = value.get(part) if isinstance(value, dict) else None
        return value


def _normal(value):
    return value.lower() if isinstance(value, str) else value


def truthy(value) -> bool:
    return value not in (None, "", False, 0)


def as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(template: str, context: dict) -> str:
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: as_text(Expression(m.group(1), context).evaluate()), str(template))


def condition(text: str, context: dict) -> bool:
    text = text.strip()
    if text.startswith("${{") and text.endswith("}}"):
        text = text[3:-2]
    return truthy(Expression(text, context).evaluate())


# --- running the composite -------------------------------------------------------------------

@dataclass
class StepRun:
    name: str
    skipped: bool
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    output_text: str = ""
    outputs: dict = field(default_factory=dict)


@dataclass
class ActionRun:
    steps: list[StepRun]
    outputs: dict

    def step(self, name: str) -> StepRun:
        return next(s for s in self.steps if s.name == name)

    @property
    def failed(self) -> bool:
        return any(not s.skipped and s.returncode != 0 for s in self.steps)


def runner_env(tmp_path: Path) -> dict:
    """What a self-hosted runner's job environment holds here: the host environment (less any
    git variables of the process that started pytest), no git identity, multi-image on PATH, and
    the repository importable, so the scripted test model (`tests.scripted_backend`) loads (the
    session cluster's workers have it through the PYTHONPATH conftest sets before Ray starts).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    empty = tmp_path / "empty-gitconfig"
    empty.touch()
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "GIT_CONFIG_GLOBAL": str(empty),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GITHUB_ACTIONS": "true",
        "CI": "true",
    })
    return env


def run_action(inputs: dict, workspace: Path, tmp_path: Path) -> ActionRun:
    declared = ACTION["inputs"]
    assert set(inputs) <= set(declared), f"undeclared inputs {set(inputs) - set(declared)}"
    missing = [n for n, spec in declared.items() if spec.get("required") and n not in inputs]
    assert not missing, f"required inputs missing: {missing}"
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir(exist_ok=True)
    context = {
        "inputs": {name: as_text(spec.get("default", "")) for name, spec in declared.items()} | dict(inputs),
        "steps": {},
        "github": {"action_path": str(ROOT), "workspace": str(workspace)},
        "runner": {"temp": str(runner_temp)},
    }
    base = runner_env(tmp_path) | {
        "GITHUB_ACTION_PATH": str(ROOT),
        "GITHUB_WORKSPACE": str(workspace),
        "RUNNER_TEMP": str(runner_temp),
        "RUNNER_TOOL_CACHE": str(tmp_path / "tool-cache"),
    }
    results: list[StepRun] = []
    failed = False
    for index, step in enumerate(ACTION["runs"]["steps"]):
        name = step.get("id") or step["name"]
        assert step.get("shell") == "bash", f"step {name}: shell must be bash"
        assert "${{" not in step["run"], f"step {name}: an expression in run: reaches the shell unquoted"
        # the runner's implicit success(): a failed step skips the ones after it
        if failed or ("if" in step and not condition(step["if"], context)):
            results.append(StepRun(name, skipped=True))
            continue
        output_file = runner_temp / f"output-{index}"
        output_file.write_text("")
        env = base | {"GITHUB_OUTPUT": str(output_file)}
        env |= {key: render(value, context) for key, value in (step.get("env") or {}).items()}
        script = runner_temp / f"step-{index}.sh"
        script.write_text(step["run"])
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=workspace,
                              env=env, capture_output=True, text=True, timeout=300)
        text = output_file.read_text(encoding="utf-8")
        result = StepRun(name, False, done.returncode, done.stdout, done.stderr, text, parse_outputs(text))
        results.append(result)
        if "id" in step:
            context["steps"][step["id"]] = {"outputs": result.outputs,
                                            "outcome": "success" if done.returncode == 0 else "failure"}
        failed = done.returncode != 0
    outputs = {name: render(spec["value"], context) for name, spec in ACTION["outputs"].items()}
    return ActionRun(results, outputs)


# --- git -------------------------------------------------------------------------------------

def git(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | \
        {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    return subprocess.run(["git", "-c", "user.name=seed", "-c", "user.email=seed@example.com", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, check=check)


@pytest.fixture
def origin(tmp_path) -> Path:
    """A bare repository with one commit on main: the workflow repository's remote."""
    seed = tmp_path / "seed"
    seed.mkdir()
    git("init", "--quiet", "-b", "main", cwd=seed)
    (seed / "README.md").write_text("music video\n")
    git("add", "README.md", cwd=seed)
    git("commit", "--quiet", "-m", "initial", cwd=seed)
    bare = tmp_path / "origin.git"
    git("clone", "--quiet", "--bare", str(seed), str(bare))
    return bare


@pytest.fixture
def workspace(tmp_path, origin) -> Path:
    """$GITHUB_WORKSPACE: what actions/checkout leaves, a clone of the remote on main."""
    path = tmp_path / "workspace"
    git("clone", "--quiet", str(origin), str(path))
    return path


def branch_exists(bare: Path, branch: str) -> bool:
    return git(f"--git-dir={bare}", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False).returncode == 0


def pushed_files(bare: Path, branch: str) -> list[str]:
    return git(f"--git-dir={bare}", "ls-tree", "-r", "--name-only", branch).stdout.split()


def head_message(bare: Path, branch: str) -> str:
    return git(f"--git-dir={bare}", "log", "-1", "--format=%B", branch).stdout


@pytest.fixture
def inputs(tmp_path, ray_session):
    """Inputs of a fast, hermetic run: the session's Ray, a scripted model, no CLIP scorer."""
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})
    return {
        "image-prompt": "a lighthouse at dusk, watercolor",
        "folder-name": "scenes/scene-1",
        "branch-name": "images/run-1",
        "models": "local",
        "ray-address": ray_session.get_runtime_context().gcs_address,
        "config": str(registry.path),
        "scorer": "none",
        "install": "false",
    }


def assert_consistent(outputs: dict, workspace: Path, folder: str) -> dict:
    """The step outputs against what the run wrote; returns the report."""
    assert set(outputs) == EXPECTED_OUTPUTS
    report = read_json(workspace / folder / "metadata/generation-report.json")
    summary = report["generation_summary"]
    assert outputs["generation-report"] == f"{folder}/metadata/generation-report.json"
    assert outputs["comparison-report"] == f"{folder}/metadata/model-comparison.md"
    assert (workspace / outputs["comparison-report"]).is_file()
    assert outputs["image-completed"] == "true"
    assert outputs["images-completed"] == str(summary["successful_generations"]) == str(len(report["images"]))
    assert outputs["primary-image-index"] == str(summary["primary_image_index"])
    assert outputs["google-image-url"] == (workspace / folder / "images/generated-image.png").as_uri()
    assert (workspace / folder / "google-image-url.txt").read_text().strip() == outputs["google-image-url"]
    assert json.loads(outputs["image-urls"]) == read_json(workspace / folder / "image-urls.json")
    assert json.loads(outputs["models-used"]) == [i["model_used"] for i in report["images"]]
    assert outputs["used-model"] == report["images"][summary["primary_image_index"]]["model_used"]
    assert json.loads(outputs["quality-scores"]) == [i["quality_score"] for i in report["images"]]
    return report


# --- tests -----------------------------------------------------------------------------------

def test_the_action_generates_commits_and_pushes_like_the_legacy_step(inputs, workspace, origin, tmp_path):
    inputs |= {"image-count": "2"}
    run = run_action(inputs, workspace, tmp_path)
    assert not run.failed, [(s.name, s.returncode, s.stderr[-2000:]) for s in run.steps]
    assert [s.name for s in run.steps if s.skipped] == ["Deprecated inputs", "install"]

    generate = run.step("generate")
    outputs = parse_outputs(generate.output_text)
    report = assert_consistent(outputs, workspace, "scenes/scene-1")
    assert outputs["images-completed"] == "2" and json.loads(outputs["models-used"]) == ["local", "local"]
    assert report["request"]["image_prompt"] == inputs["image-prompt"]
    assert run.outputs == outputs  # the action's outputs map the step's one to one

    # the branch did not exist: created from main, the folder committed on top and pushed
    files = pushed_files(origin, "images/run-1")
    assert "scenes/scene-1/images/generated-image.png" in files
    assert "scenes/scene-1/images/generated-image-2.png" in files
    assert "scenes/scene-1/metadata/generation-report.json" in files
    assert "README.md" in files
    assert head_message(origin, "images/run-1").strip() == "multi-image: add images to scenes/scene-1"
    assert "lighthouse" not in head_message(origin, "images/run-1")
    author = git(f"--git-dir={origin}", "log", "-1", "--format=%an", "images/run-1").stdout.strip()
    assert author == "github-actions[bot]"
    assert git(f"--git-dir={origin}", "rev-parse", "images/run-1~1").stdout == \
        git(f"--git-dir={origin}", "rev-parse", "main").stdout
    # only the folder was committed (the staging folders of the writer are gone, nothing else added)
    assert {f for f in files if not f.startswith("scenes/scene-1/")} == {"README.md"}
    assert git("status", "--porcelain", cwd=workspace).stdout == ""


def test_a_hostile_prompt_is_never_evaluated_by_a_shell(inputs, workspace, origin, tmp_path):
    marker_x, marker_y = tmp_path / "PWNED_x", tmp_path / "PWNED_y"
    prompt = (f"$(touch {marker_x}) `touch {marker_y}` \"quotes\" 'single' ; rm -rf / \n"
              " second line ${HOME} $((1+1)) ${{ inputs.oauth-token }} --folder-name=/etc")
    inputs |= {"image-prompt": prompt}
    run = run_action(inputs, workspace, tmp_path)
    assert not run.failed, [(s.name, s.returncode, s.stderr[-2000:]) for s in run.steps]
    assert not marker_x.exists() and not marker_y.exists()

    outputs = parse_outputs(run.step("generate").output_text)  # well-formed, nothing injected
    report = assert_consistent(outputs, workspace, "scenes/scene-1")
    assert report["request"]["image_prompt"] == prompt.strip()
    message = head_message(origin, "images/run-1")
    assert "touch" not in message and "second line" not in message
    assert "scenes/scene-1/images/generated-image.png" in pushed_files(origin, "images/run-1")


def test_legacy_tokens_are_accepted_and_appear_nowhere(inputs, workspace, origin, tmp_path):
    secret, mcp = "SECRET-TOKEN-123", '{"mcpServers": {"x": {"env": {"KEY": "MCP-SECRET-456"}}}}'
    inputs |= {"oauth-token": secret, "mcp-config": mcp}
    del inputs["install"]  # the default, 'true': multi-image is on PATH, so it is used as is
    # the results branch exists on origin already (an earlier scene): the run builds on it
    git("push", "--quiet", str(origin), "main:refs/heads/images/run-1", cwd=workspace)
    run = run_action(inputs, workspace, tmp_path)
    assert not run.failed, [(s.name, s.returncode, s.stderr[-2000:]) for s in run.steps]

    deprecated = run.step("Deprecated inputs")
    assert not deprecated.skipped and "::warning" in deprecated.stdout
    assert str(VENV_BIN / "multi-image") in run.step("install").stdout

    assert_consistent(parse_outputs(run.step("generate").output_text), workspace, "scenes/scene-1")
    leaks = [secret, "MCP-SECRET-456"]
    for step in run.steps:
        for text in (step.stdout, step.stderr, step.output_text):
            assert not any(s in text for s in leaks), step.name
    assert not any(s in json.dumps(run.outputs) for s in leaks)
    for path in workspace.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in leaks), path
    # every object of the pushed branch: commits, trees, blobs
    objects = git(f"--git-dir={origin}", "rev-list", "--objects", "images/run-1").stdout.split("\n")
    for line in filter(None, objects):
        content = subprocess.run(["git", f"--git-dir={origin}", "cat-file", "-p", line.split()[0]],
                                 capture_output=True, check=True).stdout
        assert not any(s.encode() in content for s in leaks)
    # on top of the branch's earlier commit, which was the same as main here
    assert git(f"--git-dir={origin}", "rev-parse", "images/run-1~1").stdout == \
        git(f"--git-dir={origin}", "rev-parse", "main").stdout


def test_commit_results_false_generates_and_pushes_nothing(inputs, workspace, origin, tmp_path):
    inputs |= {"commit-results": "false"}
    run = run_action(inputs, workspace, tmp_path)
    assert not run.failed, [(s.name, s.returncode, s.stderr[-2000:]) for s in run.steps]
    assert [s.name for s in run.steps if not s.skipped] == ["generate"]
    assert_consistent(parse_outputs(run.step("generate").output_text), workspace, "scenes/scene-1")
    assert not branch_exists(origin, "images/run-1")
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=workspace).stdout.strip() == "main"
    assert git(f"--git-dir={origin}", "rev-list", "--all", "--count").stdout.strip() == "1"


# what the legacy step's consumers read when no image was made
NO_IMAGE_OUTPUTS = dict.fromkeys(ACTION["outputs"], "") | \
    {"image-completed": "false", "images-completed": "0", "primary-image-index": "-1"}


def head_of(workspace: Path) -> str:
    """The branch the workspace is on, or the commit of a detached HEAD."""
    branch = git("symbolic-ref", "--quiet", "--short", "HEAD", cwd=workspace, check=False).stdout.strip()
    return branch or git("rev-parse", "HEAD", cwd=workspace).stdout.strip()


@pytest.mark.parametrize("bad, code, start", [
    pytest.param({"image-count": "11"}, "IMG_001", "branch", id="image-count"),
    # actions/checkout of a pull request leaves a detached HEAD
    pytest.param({"image-count": "11"}, "IMG_001", "detached", id="image-count-detached"),
    # `.`-like names: the workspace itself, never generated into nor committed
    pytest.param({"folder-name": "."}, "IMG_016", "branch", id="folder-dot"),
    pytest.param({"folder-name": "./"}, "IMG_016", "branch", id="folder-dot-slash"),
    pytest.param({"folder-name": "scenes/.."}, "IMG_016", "branch", id="folder-dot-dot"),
    pytest.param({"config": "missing/models.yaml"}, "IMG_018", "branch", id="config"),
])
def test_invalid_input_fails_with_exit_2_commits_nothing_and_leaves_the_workspace_where_it_was(
        inputs, workspace, origin, tmp_path, bad, code, start):
    if start == "detached":
        git("checkout", "--quiet", "--detach", "HEAD", cwd=workspace)
    before = head_of(workspace)
    inputs |= bad
    run = run_action(inputs, workspace, tmp_path)
    generate = run.step("generate")
    assert generate.returncode == 2
    assert generate.stderr.splitlines()[-1].startswith(f"error {code}:")
    assert generate.output_text == ""  # neither the CLI's outputs nor comparison-report
    assert run.step("Commit and push the images").skipped
    assert run.outputs == NO_IMAGE_OUTPUTS
    assert not (workspace / "scenes").exists()
    assert not branch_exists(origin, "images/run-1")
    assert head_of(workspace) == before and before in ("main", git("rev-parse", "main", cwd=workspace).stdout.strip())
    assert git("status", "--porcelain", cwd=workspace).stdout == ""


def test_an_invalid_branch_name_fails_before_anything_and_still_gives_the_legacy_outputs(
        inputs, workspace, origin, tmp_path):
    inputs |= {"branch-name": "images/bad..name"}
    run = run_action(inputs, workspace, tmp_path)
    assert run.step("branch").returncode == 2
    assert run.step("generate").skipped
    assert run.outputs == NO_IMAGE_OUTPUTS
    assert head_of(workspace) == "main"
    assert git(f"--git-dir={origin}", "rev-list", "--all", "--count").stdout.strip() == "1"


def ignore_a_secret(workspace: Path) -> None:
    """A workflow repository that keeps a secret beside its files, gitignored (and pushed that way)."""
    (workspace / ".gitignore").write_text(".env\n")
    git("add", ".gitignore", cwd=workspace)
    git("commit", "--quiet", "-m", "ignore .env", cwd=workspace)
    git("push", "--quiet", "origin", "main", cwd=workspace)
    (workspace / ".env").write_text("API_KEY=hunter2\n")


@pytest.mark.parametrize("folder", ["*", ":(exclude)x", ".*", "[.]env", ":/"],
                         ids=["star", "exclude-magic", "dot-star", "glob-class", "top-magic"])
def test_folder_name_is_a_path_never_a_pathspec(inputs, workspace, origin, tmp_path, folder):
    ignore_a_secret(workspace)
    (workspace / "notes.txt").write_text("untracked, not the action's\n")
    inputs |= {"folder-name": folder}
    run = run_action(inputs, workspace, tmp_path)
    assert not run.failed, [(s.name, s.returncode, s.stderr[-2000:]) for s in run.steps]
    name = os.path.normpath(folder)  # `:/` is the folder `:`
    assert (workspace / name / "metadata/generation-report.json").is_file()

    files = pushed_files(origin, "images/run-1")
    assert ".env" not in files and "notes.txt" not in files
    assert {f for f in files if not f.startswith(f"{name}/")} == {"README.md", ".gitignore"}
    assert f"{name}/images/generated-image.png" in files
    assert head_message(origin, "images/run-1").strip() == f"multi-image: add images to {name}"
    # nothing else was staged or committed locally either
    assert git("status", "--porcelain", "--ignored", cwd=workspace).stdout.splitlines() == \
        ["?? notes.txt", "!! .env"]


def test_config_is_read_from_the_triggering_commit_not_the_results_branch(inputs, workspace, origin, tmp_path):
    # the results branch exists already (an earlier scene), from before the registry was added
    git("push", "--quiet", str(origin), "main:refs/heads/images/run-1", cwd=workspace)
    registry = workspace / "registry/models.yaml"
    registry.parent.mkdir()
    registry.write_text(Path(inputs["config"]).read_text())
    git("add", "registry/models.yaml", cwd=workspace)
    git("commit", "--quiet", "-m", "our own models", cwd=workspace)  # on main only, as a push trigger has it
    inputs |= {"config": "registry/models.yaml"}
    run = run_action(inputs, workspace, tmp_path)
    assert not run.failed, [(s.name, s.returncode, s.stderr[-2000:]) for s in run.steps]
    report = assert_consistent(parse_outputs(run.step("generate").output_text), workspace, "scenes/scene-1")
    assert [i["model_used"] for i in report["images"]] == ["local"]
    # generated and pushed on the results branch, which still does not hold the registry
    files = pushed_files(origin, "images/run-1")
    assert "scenes/scene-1/images/generated-image.png" in files and "registry/models.yaml" not in files
    assert git(f"--git-dir={origin}", "rev-parse", "images/run-1~1").stdout == \
        git(f"--git-dir={origin}", "rev-parse", "main").stdout


PAYLOAD = "\n::error::pwned\n::set-output name=x::y\r::warning::carriage ##[error]legacy"
DEPRECATION = ("::warning title=multi-image::the oauth-token and mcp-config inputs are deprecated and ignored; "
               "remove them from the workflow.")


def command_lines(run: ActionRun) -> list[tuple[str, str]]:
    """Lines the runner would execute as workflow commands. Its line reader ends a line at \\n, \\r
    or both; a command is a line starting with `::` after blanks, or holding `##[` anywhere."""
    found = []
    for step in run.steps:
        for line in re.split(r"\r\n|\r|\n", step.stdout + "\n" + step.stderr):
            if (line.lstrip().startswith("::") or "##[" in line) and \
                    not (step.name == "Deprecated inputs" and line == DEPRECATION):
                found.append((step.name, line))
    return found


def hostile_values() -> list:
    """Every input, a usable value of it followed by the payload; config and ray-address take the
    fixture's value (known only in the test)."""
    base = {"image-prompt": "a lighthouse", "folder-name": "scenes/scene-1", "branch-name": "images/run-1",
            "models": "local", "scorer": "none", "commit-results": "true", "install": "false"}
    cases = [pytest.param(name, base.get(name, as_text(spec.get("default", ""))) + PAYLOAD, id=f"{name}-newline")
             for name, spec in ACTION["inputs"].items()]
    # valid values that run all the way: echoed into logs, they must not read as commands either
    return cases + [pytest.param("folder-name", "scenes/##[error]pwned ::error::x", id="folder-name-commands"),
                    pytest.param("image-prompt", "##[error]pwned", id="image-prompt-legacy-command")]


@pytest.mark.parametrize("name, value", hostile_values())
def test_no_input_can_inject_a_workflow_command(inputs, workspace, origin, tmp_path, name, value):
    if name in ("config", "ray-address"):
        value = inputs[name] + PAYLOAD
    if name == "python":  # only the install step reads it
        inputs["install"] = "true"
    inputs |= {name: value}
    run = run_action(inputs, workspace, tmp_path)
    assert command_lines(run) == []
    for step in run.steps:  # nor an output of its own
        assert set(parse_outputs(step.output_text)) <= EXPECTED_OUTPUTS | {"bin", "config", "start-ref"}, step.name
    generate = run.step("generate")
    if not generate.skipped and generate.returncode == 2:  # the error is still one readable line
        assert generate.stderr.count("error IMG_") == 1
        assert generate.stderr.splitlines()[-1].startswith("error IMG_")
        # where the message cites the value, it shows it escaped, not left out
        assert "pwned" not in generate.stderr or "\\n::error::pwned\\n::set-output" in generate.stderr


def test_action_yml_declares_the_design_cards_interface():
    inputs = ACTION["inputs"]
    defaults = {"image-count": "1", "models": "auto", "generation-strategy": "smart", "enable-comparison": "false",
                "quality-threshold": "0.7", "max-parallel": "3", "ray-address": "", "upload-uri": "",
                "commit-results": "true"}
    assert {name: as_text(inputs[name].get("default")) for name in defaults} == defaults
    assert all(inputs[name]["required"] is True for name in ("image-prompt", "folder-name", "branch-name"))
    for legacy in ("oauth-token", "mcp-config"):
        assert inputs[legacy]["required"] is False and "DEPRECATED" in inputs[legacy]["description"]
    assert set(ACTION["outputs"]) == EXPECTED_OUTPUTS
    assert ACTION["runs"]["using"] == "composite"
    # the legacy secrets reach no step's environment
    for step in ACTION["runs"]["steps"]:
        env_text = json.dumps(step.get("env") or {})
        assert "oauth-token" not in env_text and "mcp-config" not in env_text


def test_the_cli_prints_a_user_error_as_one_line_whatever_the_value_holds(capsys):
    """Below the Action: every line break the runner knows, terminal escapes and `##[`."""
    from cluster.entrypoints.cli import main

    config = "x\u2028::error::a\x1b[31m\r\n::error::b\x85 ##[error]c.yaml"
    status = main(["generate", "--image-prompt=a cat", "--folder-name=out", f"--config={config}"])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n")
    line = captured.err[:-1]
    assert line.startswith("error IMG_018: model config ")
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", line) and "##[" not in line
    assert "\\u2028::error::a\\x1b[31m\\r\\n::error::b\\x85 #\\x23[error]c.yaml" in line


def test_plain_progress_lines_hold_one_event_each():
    import io

    from cluster.observability.progress import choose_sinks

    log = io.StringIO()
    (sink,) = choose_sinks(False, stream=log)
    sink({"event": "model_loading", "time": 0.0, "model": "m\r::error::x ##[error]y", "replicas": 2})
    assert log.getvalue().count("\n") == 1 and "\r" not in log.getvalue() and "##[" not in log.getvalue()
    assert log.getvalue() == "[multi-image] model_loading model=m\\r::error::x #\\x23[error]y replicas=2\n"
