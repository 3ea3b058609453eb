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
    patches = series_patches(project)
    branch_files = {edit["file"] for p in patches if p.get("branch_only") for edit in p["edit"]}
    has_branch = all(os.path.isfile(os.path.join(base, rel)) for rel in branch_files)
    expected = [p["subject"] for p in patches if has_branch or not p.get("branch_only")]
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
    index = len([p for p in series_patches(project) if not p.get("branch_only")]) - 1  # the last core patch
    subject = series_patches(project)[index]["subject"]
    edit_series(project, f'subject = "{subject}"', f'subject = "Edited {subject}"')
    problems = stale_check_problems(project, env)
    assert f"not made by the series: {names[index]}" in problems
    assert f"missing from patches/: {names[index][:5]}Edited-" in " ".join(problems)
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


# ---- branch-only patches: they edit files only the 0.4 branch has (its llm/ tree) ----------------

def branch_only(project):
    return [p for p in series_patches(project) if p.get("branch_only")]


def base_variant(base, dest, with_branch_files, patches):
    """A clone of the shared base that has (or lacks) the files the branch-only patches edit. Files
    added here hold only the lines the edits anchor on: enough for a patch to apply."""
    clone = clone_base(base, dest)
    files = sorted({edit["file"] for p in patches if p.get("branch_only") for edit in p["edit"]})
    for rel in files:
        path = clone / rel
        if with_branch_files and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            anchors = [e["after"] for p in patches if p.get("branch_only") for e in p["edit"] if e["file"] == rel]
            path.write_text("# stand-in\n" + "\n".join(anchors) + "\n")
        elif not with_branch_files and path.exists():
            path.unlink()
    subprocess.run(["git", "add", "-A"], cwd=clone, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "variant",
                    "--allow-empty"], cwd=clone, check=True)
    return clone


def test_a_branch_base_gets_every_patch(project, base, tmp_path):
    patches = series_patches(project)
    branch = base_variant(base, tmp_path / "branch", True, patches)
    env = {"MINDNLP_BASE": str(branch)}
    assert run_series(project, "export", env=env).returncode == 0
    assert len(list((project / "patches").glob("*.patch"))) == len(patches)
    dest = tmp_path / "applied"
    proc = run_series(project, "apply", str(dest), env=env)
    assert proc.returncode == 0 and "skipped" not in proc.stderr, proc.stderr
    for patch in branch_only(project):
        for edit in patch["edit"]:
            assert edit["insert"] in (dest / edit["file"]).read_text()


def test_a_base_without_the_branch_keeps_checks_and_skips_the_branch_only_patches(project, base, tmp_path):
    patches = series_patches(project)
    wheel_like = base_variant(base, tmp_path / "wheel", False, patches)
    env = {"MINDNLP_BASE": str(wheel_like)}
    kept = {p.name: p.read_bytes() for p in sorted((project / "patches").glob("*.patch"))[-len(branch_only(project)):]}
    assert run_series(project, "export", env=env).returncode == 0
    assert {name: (project / "patches" / name).read_bytes() for name in kept} == kept
    proc = run_series(project, "export", "--check", env=env)
    assert proc.returncode == 0 and "checked against series.toml only" in proc.stderr, proc.stderr
    proc = run_series(project, "apply", str(tmp_path / "applied"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stderr and all(name in proc.stderr for name in kept)


def test_a_branch_only_patch_is_renumbered_when_a_core_patch_comes_before_it(project, base, tmp_path):
    patches = series_patches(project)
    env = {"MINDNLP_BASE": str(base_variant(base, tmp_path / "wheel", False, patches))}
    (project / "mindnlp" / "accel" / "extra.py").write_text("EXTRA = 1\n")
    text = (project / "scripts" / "series.toml").read_text(encoding="utf-8")
    first_branch_only = text.index("[[patch]]\nname = \"" + branch_only(project)[0]["name"])
    (project / "scripts" / "series.toml").write_text(
        text[:first_branch_only] + '[[patch]]\nname = "extra"\nsubject = "accel: an extra module"\nbody = "b"\n'
        'add = ["mindnlp/accel/extra.py"]\n\n' + text[first_branch_only:], encoding="utf-8")
    old = sorted(p.name for p in (project / "patches").glob("*.patch"))[-1]
    proc = run_series(project, "export", "--check", env=env)
    assert proc.returncode == 1 and f"numbered otherwise by the series: {old}" in proc.stderr
    assert run_series(project, "export", env=env).returncode == 0
    names = sorted(p.name for p in (project / "patches").glob("*.patch"))
    assert names[-1] == f"{int(old[:4]) + 1:04d}" + old[4:] and old not in names
    assert run_series(project, "export", "--check", env=env).returncode == 0


def test_a_stale_branch_only_patch_is_caught_without_the_branch(project, base, tmp_path):
    patches = series_patches(project)
    env = {"MINDNLP_BASE": str(base_variant(base, tmp_path / "wheel", False, patches))}
    insert = branch_only(project)[0]["edit"][0]["insert"]
    edit_series(project, f'insert = "{insert}"', f'insert = "{insert}  # edited"')
    proc = run_series(project, "export", "--check", env=env)
    assert proc.returncode == 1 and "branch-only patches in patches/ do not match" in proc.stderr
    assert "changed: " + sorted(p.name for p in (project / "patches").glob("*.patch"))[-1] in proc.stderr


def test_a_missing_branch_only_patch_cannot_be_exported_without_the_branch(project, base, tmp_path):
    patches = series_patches(project)
    env = {"MINDNLP_BASE": str(base_variant(base, tmp_path / "wheel", False, patches))}
    sorted((project / "patches").glob("*.patch"))[-1].unlink()
    proc = run_series(project, "export", env=env)
    assert proc.returncode == 1 and "missing from patches/" in proc.stderr and "Traceback" not in proc.stderr


def test_branch_only_patches_must_come_last(project, base):
    text = (project / "scripts" / "series.toml").read_text(encoding="utf-8")
    first = text.index("[[patch]]")
    (project / "scripts" / "series.toml").write_text(
        text[:first] + '[[patch]]\nname = "early"\nbranch_only = true\nsubject = "s"\nbody = "b"\n'
        '[[patch.edit]]\nfile = "llm/x.py"\nafter = "a"\ninsert = "b"\n\n' + text[first:], encoding="utf-8")
    proc = run_series(project, "fork", env=base_env(base))
    assert proc.returncode == 1 and "must come after every other patch" in proc.stderr
