"""Hostile spec and preset files are refused in bounded time and memory with one line (exit 2 / ConfigError).

Each case runs in a subprocess under a 3 GiB address-space limit (torch's import fits; the 922-byte alias bomb
below needed more than 3 GB before) and a 60 s timeout, and must finish within seconds. Every CLI command refuses a
bad spec before importing torch, transformers, MLflow, Optuna or datasets (Python's import profile lists them).
"""

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import adatp
from adatp import safe_yaml

REPO = Path(__file__).resolve().parents[2]
LIMIT = 3 << 30


def alias_bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for index in range(1, 9):
        previous, name = chr(ord("a") + index - 1), chr(ord("a") + index)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


VALID_SPEC = (REPO / "studies" / "demo.yaml").read_text()
VALID_PRESET = (REPO / "presets" / "demo-synthetic-b0.25.yaml").read_text()
HOSTILE = {  # name -> (file bytes, words the one-line error must contain)
    "alias bomb": (alias_bomb().encode(), "aliases"),
    "deep nesting": (("x: " + "[" * 10_000 + "]" * 10_000 + "\n").encode(), "nested deeper"),
    "huge integer": (("n_trials: " + "9" * 5000 + "\n").encode(), "digits"),
    "duplicate key": (b"name: a\nname: b\n", "duplicate key"),
    "utf-16": ("name: demo\n".encode("utf-16"), "not UTF-8"),
    "latin-1": ("name: d\xe9mo\n".encode("latin-1"), "not UTF-8"),
    "too large": (b"name: demo\n" + b"# " + b"x" * (2 << 20) + b"\n", "at most"),
}


def run_limited(code: str) -> subprocess.CompletedProcess:
    prologue = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({LIMIT}, {LIMIT}))\n"
    return subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_spec_exits_2_with_one_line(tmp_path, case):
    content, words = HOSTILE[case]
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    started = time.monotonic()
    result = run_limited(f"from autotune.cli import main; import sys; sys.argv = ['autotune', 'status', {str(path)!r}]"
                         "; main()")
    assert time.monotonic() - started < 30
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and len(lines[0]) < 300, lines


HEAVY = ("torch", "transformers", "mlflow", "optuna", "datasets")
BAD_SPECS = {  # name -> (spec text, words the one-line error must contain)
    "yaml syntax": ("name: demo\nbudgets: [0.3, 0.5\n", "not valid YAML at line 3"),
    "unknown key": (VALID_SPEC + "bogus_key: 1\n", "bogus_key: unknown key"),
    "budget out of range": (VALID_SPEC.replace("budgets: [0.25, 0.35, 0.5]", "budgets: [0.3, 1.5]"),
                            "budgets[1]: must be in (0, 1], got 1.5"),
    "alias bomb": (alias_bomb(), "aliases"),
}
REFUSALS = [("study", case) for case in BAD_SPECS] + [
    (command, "unknown key") for command in ("worker", "status", "export", "pareto", "data", "ui", "dashboard")]


@pytest.mark.parametrize(("command", "case"), REFUSALS)
def test_a_bad_spec_is_refused_before_any_heavy_import(tmp_path, command, case):
    """The installed `autotune` script, with Python's import profile on: the modules it imported are listed."""
    text, words = BAD_SPECS[case]
    assert "budgets: [0.25, 0.35, 0.5]" in VALID_SPEC  # the out-of-range case edits the demo's budgets
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    script = Path(sys.executable).parent / "autotune"
    result = subprocess.run([str(script), command, str(path)], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    profile = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[1].strip() for line in profile[1:]}  # the first line is the table's header
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("import time:")]
    assert result.returncode == 2 and result.stdout == "", (result.returncode, result.stdout[-2000:], lines[-5:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert "autotune.spec" in imported and "yaml" in imported  # the profile is real: the spec was read
    assert sorted(name for name in HEAVY if name in imported) == []


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_preset_is_one_config_error(tmp_path, case):
    content, words = HOSTILE[case]
    path = tmp_path / "preset.yaml"
    path.write_bytes(content)
    started = time.monotonic()
    result = run_limited(f"""
        import adatp
        try:
            adatp.load_preset({str(path)!r})
        except adatp.ConfigError as error:
            print("ConfigError:", error)
    """)
    assert time.monotonic() - started < 30
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ConfigError: preset:") and words in result.stdout
    assert result.stdout.count("\n") == 1


def test_hostile_override_and_unreadable_spec(tmp_path):
    from autotune.spec import SpecError, load_spec

    with pytest.raises(SpecError, match=r"digits \(at most 64\)"):
        load_spec(REPO / "studies" / "demo.yaml", ["n_trials=" + "9" * 5000])
    with pytest.raises(SpecError, match=r"aliases"):
        load_spec(REPO / "studies" / "demo.yaml", ["base=[&x 1, *x]"])
    long_value = "dataset.limit=" + "[" + "1," * 50_000 + "1]"
    with pytest.raises(SpecError) as error:
        load_spec(REPO / "studies" / "demo.yaml", [long_value])
    assert len(str(error.value)) < 400  # the 100 kB value is cut in the message
    if os.geteuid() != 0:  # root reads anything
        path = tmp_path / "locked.yaml"
        path.write_text(VALID_SPEC)
        path.chmod(0)
        with pytest.raises(SpecError, match="permission denied"):
            load_spec(path)
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_valid_files_still_load_and_anchors_without_aliases_are_fine(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text(VALID_PRESET.replace("format: adatp-preset/v1", "format: &f adatp-preset/v1"))
    assert adatp.load_preset(path).config.retention > 0
    assert safe_yaml.load("a: 1\nb: [1, 2.5, 'x']\n") == {"a": 1, "b": [1, 2.5, "x"]}
    nested: list = []
    for _ in range(29):
        nested = [nested]
    assert safe_yaml.load("x: " + "[" * 30 + "]" * 30) == {"x": nested}  # 31 levels with the mapping: accepted


def test_select_preset_skips_hostile_presets(tmp_path):
    (tmp_path / "good.yaml").write_text(VALID_PRESET)
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    (tmp_path / "utf16.yaml").write_bytes(VALID_PRESET.encode("utf-16"))
    chosen = adatp.select_preset(tmp_path, dataset="synthetic", budget=1.0)
    assert chosen.target["dataset"] == "synthetic"


LONG_LIST = ["ds"] * 200_000
LONG_TEXT = "x" * 5_000_000
REFUSAL_CHARS = 300  # adatp.validation.LINE_CHARS: an error is one line a person reads


def _preset_with(**changes) -> dict:
    import yaml

    data = yaml.safe_load(VALID_PRESET)
    for dotted, value in changes.items():
        block, key = dotted.split(".")
        data[block][key] = value
    return data


@pytest.mark.parametrize(("case", "words"), [
    ("target.dataset", "(200,000 items)"), ("config.method", "(5,000,000 characters)"),
    ("config.seed", "(200,000 items)"), ("provenance.created", "(5,000,000 characters)")])
def test_a_preset_with_a_huge_value_is_refused_in_one_short_line(case, words):
    value = LONG_LIST if words.endswith("items)") else LONG_TEXT
    with pytest.raises(adatp.ConfigError) as error:
        adatp.Preset.from_dict(_preset_with(**{case: value}))
    message = str(error.value)
    assert message.startswith(f"preset.{case}") and words in message and "\n" not in message
    assert len(message) <= REFUSAL_CHARS, len(message)


def test_a_preset_file_with_a_200000_item_list_is_refused_in_one_short_line(tmp_path):
    import yaml

    path = tmp_path / "preset.yaml"
    data = _preset_with(**{"target.dataset": LONG_LIST})
    path.write_text(yaml.safe_dump(data, default_flow_style=None, width=1 << 30))
    assert 1 << 19 < path.stat().st_size < 1 << 20  # under the 1 MiB file limit: the value itself is refused
    with pytest.raises(adatp.ConfigError) as error:
        adatp.load_preset(path)
    assert "target.dataset" in str(error.value) and "(200,000 items)" in str(error.value)
    assert len(str(error.value)) <= REFUSAL_CHARS


@pytest.mark.parametrize(("override", "words"), [
    ("name=" + LONG_TEXT.upper(), "(5,000,000 characters)"),
    ("dataset.name=" + LONG_TEXT.upper(), "(5,000,000 characters)"),
    ("budgets=[" + ",".join(["2"] * 200_000) + "]", "budgets[0]"),
    ("model.device=" + LONG_TEXT, "(5,000,000 characters)"), (LONG_TEXT + "=1", "(5,000,000 characters)"),
    ("base.method=" + LONG_TEXT, "(5,000,000 characters)")])
def test_an_override_with_a_huge_value_is_refused_in_one_short_line(override, words):
    from autotune.spec import SpecError, load_spec

    with pytest.raises((SpecError, adatp.ConfigError)) as error:
        load_spec(REPO / "studies" / "demo.yaml", [override])
    message = str(error.value)
    assert words in message and "\n" not in message and len(message) <= REFUSAL_CHARS, message[:500]


def test_the_cli_cuts_a_spec_with_a_200000_item_list_to_one_short_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(VALID_SPEC.replace("budgets: [0.25, 0.35, 0.5]", "budgets: [" + ", ".join(["0.3"] * 200_000) + "]")
                    .replace("name: demo\n", "name: demo\ntags: [" + ", ".join(LONG_LIST[:50_000]) + "]\n", 1))
    script = Path(sys.executable).parent / "autotune"
    result = subprocess.run([str(script), "study", str(path)], capture_output=True, text=True, timeout=60, cwd=REPO)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines[:3]
    assert len(lines[0]) <= REFUSAL_CHARS + len("error: "), len(lines[0])


@pytest.mark.parametrize(("args", "words"), [
    (["study", "studies/demo.yaml", "--bogus"], "No such option: --bogus"),
    (["pareto"], "Missing argument 'spec_path'"),
    (["bogus"], "No such command 'bogus'"),
    (["ui", "studies/demo.yaml", "--port", "9" * 50_000], "Invalid value for '--port'"),
    (["study", "studies/demo.yaml", "--gpus", "x" * 100_000], "(100,000 characters)")])
def test_a_bad_command_line_is_one_short_error_line(args, words):
    """Click's usage errors too: one `error:` line and exit 2, not a usage box."""
    script = Path(sys.executable).parent / "autotune"
    result = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60, cwd=REPO)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and result.stdout == "" and len(lines) == 1, (result.returncode, lines[:5])
    assert lines[0].startswith("error: ") and words in lines[0], lines
    assert len(lines[0]) <= REFUSAL_CHARS + len("error: "), len(lines[0])


@pytest.mark.parametrize(("override", "words"), [
    ("dataset.root=/" + "r" * 3000, "dataset.root: not a possible path (a name in it is 3,000 bytes long, at most"),
    ("presets_dir=" + "/p" * 60_000, "presets_dir: not a possible path (120,000 bytes long, at most 4,096)"),
    ("workdir=/tmp/" + "w" * 256, "workdir: not a possible path (a name in it is 256 bytes long, at most 255)"),
    ("storage=sqlite:////tmp/" + "s" * 300 + ".db", "storage: not a possible path (a name in it is 303 bytes"),
    ("model.path=" + "/m" * 3000, "model.path: not a possible path (6,000 bytes long"),
    ("tracking_uri=/" + "t" * 256, "tracking_uri: not a possible path (a name in it is 256 bytes")])
def test_a_path_no_filesystem_holds_is_refused_with_the_spec(override, words):
    """Refused when the spec is read, in one short line, not by an OSError (exit 1) when the path is first used."""
    from autotune.spec import SpecError, load_spec

    with pytest.raises(SpecError) as error:
        load_spec(REPO / "studies" / "demo.yaml", [override])
    message = str(error.value)
    assert message.startswith(words) and "\n" not in message and len(message) <= REFUSAL_CHARS, message
