"""The patch-series pipeline: fork, export, stale check, apply, and its errors on bad bases.

Each test works on a copy of the project in a temporary directory (scripts, overlay, patches),
sharing the real base, so it can change files without touching the checkout.
"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_series(project, *args, env=None):
    return subprocess.run([sys.executable, os.path.join(project, "scripts", "series.py"), *args],
                          capture_output=True, text=True, env=dict(os.environ, **(env or {})))


@pytest.fixture(scope="module")
def base():
    proc = run_series(ROOT, "base")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def project(tmp_path):
    """A copy of the project's pipeline inputs; tests point it at the shared base."""
    copy = tmp_path / "project"
    for name in ("scripts", "mindnlp", "patches"):
        shutil.copytree(os.path.join(ROOT, name), copy / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def base_env(base):
    return {"MINDNLP_BASE": base}


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def test_fork_has_one_commit_per_patch(project, base):
    proc = run_series(project, "fork", env=base_env(base))
    assert proc.returncode == 0, proc.stderr
    import tomllib
    with open(project / "scripts" / "series.toml", "rb") as f:
        expected = [p["subject"] for p in tomllib.load(f)["patch"]]
    subjects = git(project / ".fork", "log", "--format=%s", "--reverse",
                   f"{git(base, 'rev-parse', 'HEAD').strip()}..HEAD").splitlines()
    assert subjects == expected
    hook = (project / ".fork" / "mindnlp" / "transformers" / "__init__.py").read_text()
    assert hook.rstrip().endswith("_install_accel()")


def test_export_is_reproducible(project, base):
    env = base_env(base)
    assert run_series(project, "export", env=env).returncode == 0
    first = {p.name: p.read_bytes() for p in (project / "patches").glob("*.patch")}
    first_zip = (project / "patches.zip").read_bytes()
    assert run_series(project, "export", env=env).returncode == 0
    second = {p.name: p.read_bytes() for p in (project / "patches").glob("*.patch")}
    assert first == second and first
    assert (project / "patches.zip").read_bytes() == first_zip


def test_committed_patches_are_fresh(base):
    proc = run_series(ROOT, "export", "--check", env=base_env(base))
    assert proc.returncode == 0, proc.stderr


def test_stale_check_catches_a_changed_overlay_file(project, base):
    env = base_env(base)
    assert run_series(project, "export", env=env).returncode == 0
    assert run_series(project, "export", "--check", env=env).returncode == 0
    with open(project / "mindnlp" / "accel" / "__init__.py", "a") as f:
        f.write("\n# a change the committed series does not have\n")
    assert stale_check_problems(project, env) == ["changed: " + first_patch(project)]


def fresh_export(project, env):
    """Export into the project copy and confirm the check passes: the names of its patches."""
    assert run_series(project, "export", env=env).returncode == 0
    proc = run_series(project, "export", "--check", env=env)
    assert proc.returncode == 0, proc.stderr
    return sorted(p.name for p in (project / "patches").glob("*.patch"))


def first_patch(project):
    return sorted(p.name for p in (project / "patches").glob("*.patch"))[0]


def stale_check_problems(project, env):
    """Run the check, which must fail with the stale message; the problem lines it lists."""
    proc = run_series(project, "export", "--check", env=env)
    assert proc.returncode == 1, proc.stderr
    assert "patches/ is stale" in proc.stderr and "scripts/export.sh" in proc.stderr
    assert "Traceback" not in proc.stderr
    return [line.strip() for line in proc.stderr.splitlines() if line.startswith("  ")]


def edit_series(project, old, new):
    """Replace the one occurrence of old in the project's scripts/series.toml."""
    path = project / "scripts" / "series.toml"
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def series_patches(project):
    import tomllib
    with open(project / "scripts" / "series.toml", "rb") as f:
        return tomllib.load(f)["patch"]


def test_stale_check_catches_an_edited_subject(project, base):
    env = base_env(base)
    names = fresh_export(project, env)
    # A subject longer than git's 64-character file names: its end is not in the name, only in the text.
    index, subject = next((i, p["subject"]) for i, p in enumerate(series_patches(project)) if len(p["subject"]) > 64)
    edit_series(project, f'subject = "{subject}"', f'subject = "{subject}, edited"')
    assert stale_check_problems(project, env) == ["changed: " + names[index]]


def test_stale_check_catches_a_subject_edit_that_renames_the_patch(project, base):
    env = base_env(base)
    names = fresh_export(project, env)
    subject = series_patches(project)[-1]["subject"]
    edit_series(project, f'subject = "{subject}"', f'subject = "Edited {subject}"')
    problems = stale_check_problems(project, env)
    assert f"not made by the series: {names[-1]}" in problems
    assert f"missing from patches/: {names[-1][:5]}Edited-" in " ".join(problems)
    assert len(problems) == 2


def test_stale_check_catches_an_edited_body(project, base):
    env = base_env(base)
    names = fresh_export(project, env)
    index = len(names) // 2
    line = series_patches(project)[index]["body"].strip().splitlines()[0]
    edit_series(project, line + "\n", line + " Edited.\n")
    assert stale_check_problems(project, env) == ["changed: " + names[index]]


def test_stale_check_catches_a_deleted_patch(project, base):
    env = base_env(base)
    names = fresh_export(project, env)
    (project / "patches" / names[1]).unlink()
    assert stale_check_problems(project, env) == ["missing from patches/: " + names[1]]


def test_stale_check_catches_a_stray_patch(project, base):
    env = base_env(base)
    names = fresh_export(project, env)
    shutil.copyfile(project / "patches" / names[0], project / "patches" / "0099-stray.patch")
    assert stale_check_problems(project, env) == ["not made by the series: 0099-stray.patch"]


def test_unclaimed_overlay_file_is_an_error(project, base):
    (project / "mindnlp" / "orphan.py").write_text("X = 1\n")
    proc = run_series(project, "fork", env=base_env(base))
    assert proc.returncode == 1
    assert "mindnlp/orphan.py" in proc.stderr


def test_series_applies_and_the_patched_tree_imports(project, base, tmp_path):
    dest = tmp_path / "applied"
    proc = run_series(project, "apply", str(dest), env=base_env(base))
    assert proc.returncode == 0, proc.stderr
    code = ("import mindnlp, mindnlp.accel, mindnlp.transformers; "
            "print('RESULT', mindnlp.__file__, mindnlp.accel.enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(dest)))
    assert out.returncode == 0, out.stderr
    path, enabled = next(line.split()[1:] for line in out.stdout.splitlines()
                         if line.startswith("RESULT "))
    assert path.startswith(str(dest)) and enabled == "True"


def test_missing_base_is_a_clear_error(project, tmp_path):
    proc = run_series(project, "fork", env={"MINDNLP_BASE": str(tmp_path / "nowhere")})
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def clone_base(base, dest):
    subprocess.run(["git", "clone", "-q", base, str(dest)], check=True)
    return dest


def test_base_with_uncommitted_changes_is_refused(project, base, tmp_path):
    dirty = clone_base(base, tmp_path / "dirty")
    with open(dirty / "mindnlp" / "__init__.py", "a") as f:
        f.write("# local edit\n")
    proc = run_series(project, "fork", env={"MINDNLP_BASE": str(dirty)})
    assert proc.returncode == 1
    assert "uncommitted changes" in proc.stderr and "mindnlp/__init__.py" in proc.stderr


def test_base_where_a_patched_file_differs_names_patch_file_and_hunk(project, base, tmp_path):
    other = clone_base(base, tmp_path / "other")
    init = other / "mindnlp" / "transformers" / "__init__.py"
    init.write_text(init.read_text().replace("__all__.extend(models.__all__)",
                                             "__all__.extend(sorted(models.__all__))"))
    git(other, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "diverge")
    proc = run_series(project, "apply", str(tmp_path / "applied"), env={"MINDNLP_BASE": str(other)})
    assert proc.returncode == 1
    assert "0001-" in proc.stderr
    assert "mindnlp/transformers/__init__.py" in proc.stderr and "hunk @@" in proc.stderr
