"""The patch-series pipeline: base tree, fork, export, stale check, verify.

    python scripts/series.py base            make or find the upstream base; print its path
    python scripts/series.py fork            build .fork/: the base plus our series as commits
    python scripts/series.py export [--check]
                                             write patches/ and patches.zip (--check: fail if stale)
    python scripts/series.py apply DEST [--patches DIR]
                                             a fresh copy of the base with the patches git-applied
    python scripts/series.py patched         print a patched tree for the current overlay (cached)

Base selection (MINDNLP_BASE): a path to an existing clone of the 0.4 branch; "git" for a clone
from the upstream host at MINDNLP_BASE_REF (default the contest's commit); "wheel" for a
repository made from the mindnlp 0.4.1 wheel; "auto" (default) tries git, then the wheel.
A patch marked `branch_only` in scripts/series.toml edits files only the 0.4 branch has (the janus
package under llm/). Such patches come last. On a base without those files (the wheel) they cannot
be made or applied: export keeps the committed ones in patches/ (checking their message and added
lines against series.toml), and apply skips them, saying so.
Standard library only, so it runs before the virtual environment exists.
"""
import argparse
import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERIES_FILE = os.path.join(ROOT, "scripts", "series.toml")
UPSTREAM_DIR = os.path.join(ROOT, ".upstream")
FORK_DIR = os.path.join(ROOT, ".fork")
PATCHED_ROOT = os.path.join(ROOT, ".build", "patched")
PATCHES_DIR = os.path.join(ROOT, "patches")
ZIP_PATH = os.path.join(ROOT, "patches.zip")

UPSTREAM_URL = "https://github.com/mindspore-lab/mindnlp.git"
UPSTREAM_BRANCH = "0.4"
DEFAULT_REF = "6d1af55a5"
WHEEL_SPEC = "mindnlp==0.4.1"
BASE_INFO = "accel-base-info"  # kept inside the base's .git, so the tree stays clean

# Fixed identity and dates make the fork's commits, and so the exported series, reproducible.
IDENTITY = {
    "GIT_AUTHOR_NAME": "mindnlp-accel", "GIT_AUTHOR_EMAIL": "accel@mindnlp.invalid",
    "GIT_COMMITTER_NAME": "mindnlp-accel", "GIT_COMMITTER_EMAIL": "accel@mindnlp.invalid",
    "GIT_AUTHOR_DATE": "2025-06-01T00:00:00+0000", "GIT_COMMITTER_DATE": "2025-06-01T00:00:00+0000",
}
# Settings that would change format-patch output from one user's git configuration to another's.
NEUTRAL_GIT = ["-c", "core.abbrev=12", "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false",
               "-c", "diff.relative=false", "-c", "diff.algorithm=myers", "-c", "diff.renames=false",
               "-c", "format.signature=", "-c", "format.numbered=auto", "-c", "format.coverLetter=false",
               "-c", "core.autocrlf=false", "-c", "commit.gpgsign=false"]
FORMAT_PATCH_FLAGS = ["--zero-commit", "--no-signature", "--full-index", "--no-stat", "--keep-subject",
                      "--no-numbered", "--no-renames", "--minimal"]


class SeriesError(Exception):
    """A problem the user can act on; printed without a traceback."""


def git(*args, cwd=None, env=None, check=True):
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(["git", *NEUTRAL_GIT, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SeriesError(f"git {' '.join(args)} failed in {cwd}:\n{proc.stderr.strip()}")
    return proc


def say(message):
    print(message, file=sys.stderr)


# ---- series definition ----------------------------------------------------------------------

def load_series():
    with open(SERIES_FILE, "rb") as f:
        patches = tomllib.load(f).get("patch", [])
    if not patches:
        raise SeriesError(f"{SERIES_FILE} defines no patch")
    claimed = {}
    for patch in patches:
        for key in ("name", "subject", "body"):
            if not patch.get(key):
                raise SeriesError(f"a patch in {SERIES_FILE} has no {key}")
        files = set()
        for pattern in patch.get("add", []):
            matches = {os.path.relpath(m, ROOT)
                       for m in glob.glob(os.path.join(ROOT, pattern), recursive=True)
                       if os.path.isfile(m) and "__pycache__" not in m}
            matches -= set(claimed)
            if not matches:
                raise SeriesError(f"patch {patch['name']}: {pattern!r} matches no file that an "
                                  "earlier patch has not already added")
            files |= matches
        for rel in files:
            claimed[rel] = patch["name"]
        patch["files"] = sorted(files)
    flags = [bool(p.get("branch_only")) for p in patches]
    if flags != sorted(flags):
        raise SeriesError(f"{SERIES_FILE}: branch_only patches must come after every other patch")
    for patch in patches:
        if patch.get("branch_only") and (not patch.get("edit") or patch.get("add")):
            raise SeriesError(f"branch_only patch {patch['name']} must edit files of the branch and add none "
                              "(files it added would be left out on a base without the branch)")
    overlay = overlay_files()
    unclaimed = sorted(set(overlay) - set(claimed))
    if unclaimed:
        raise SeriesError("files under mindnlp/ that no patch in scripts/series.toml adds:\n  "
                          + "\n  ".join(unclaimed))
    return patches


def overlay_files():
    found = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "mindnlp")):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        found.extend(os.path.relpath(os.path.join(dirpath, f), ROOT)
                     for f in sorted(filenames) if not f.endswith(".pyc"))
    return found


def overlay_stamp(base):
    """A digest of everything the patched tree depends on: series, overlay files, base commit."""
    digest = hashlib.sha256()
    for rel in ["scripts/series.toml", "scripts/series.py", *overlay_files()]:
        digest.update(rel.encode())
        with open(os.path.join(ROOT, rel), "rb") as f:
            digest.update(f.read())
    digest.update(head(base).encode())
    return digest.hexdigest()[:16]


def branch_only_files(patches):
    return sorted({edit["file"] for p in patches if p.get("branch_only") for edit in p["edit"]})


def has_branch_part(base, patches):
    """Whether `base` has every file the branch-only patches edit (the 0.4 branch does)."""
    return all(os.path.isfile(os.path.join(base, rel)) for rel in branch_only_files(patches))


def patches_for(base, patches):
    """The patches the fork of `base` holds: all of them, or the core ones where it lacks the branch's files."""
    return [p for p in patches if not p.get("branch_only") or has_branch_part(base, patches)]


# ---- base -----------------------------------------------------------------------------------

def head(repo):
    return git("rev-parse", "HEAD", cwd=repo).stdout.strip()


def check_base(path):
    """Refuse a base that is missing, not a git work tree, not mindnlp, or has local changes."""
    if not os.path.isdir(path):
        raise SeriesError(f"base {path} does not exist")
    if git("rev-parse", "--is-inside-work-tree", cwd=path, check=False).returncode != 0:
        raise SeriesError(f"base {path} is not a git work tree")
    top = git("rev-parse", "--show-toplevel", cwd=path).stdout.strip()
    if not os.path.isfile(os.path.join(top, "mindnlp", "transformers", "__init__.py")):
        raise SeriesError(f"base {top} has no mindnlp/transformers/__init__.py: not a mindnlp tree")
    dirty = git("status", "--porcelain", "--untracked-files=no", cwd=top).stdout.strip()
    if dirty:
        raise SeriesError(f"base {top} has uncommitted changes; commit or stash them first:\n{dirty}")
    return top


def base_dir():
    """The base in use, made on first call when it is ours to make."""
    choice = os.environ.get("MINDNLP_BASE", "auto")
    if choice not in ("auto", "git", "wheel"):
        return check_base(os.path.abspath(choice))
    if os.path.isdir(os.path.join(UPSTREAM_DIR, ".git")):
        return check_base(UPSTREAM_DIR)
    with build_lock():
        if not os.path.isdir(os.path.join(UPSTREAM_DIR, ".git")):
            make_base(choice)
    return check_base(UPSTREAM_DIR)


def describe_base(path):
    info_file = os.path.join(path, ".git", BASE_INFO)
    if os.path.isfile(info_file):
        with open(info_file) as f:
            source = f.read().strip()
    else:
        source = "a user's clone"
    return f"{source} at {path} (commit {head(path)[:12]})"


def make_base(choice):
    tmp = UPSTREAM_DIR + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if choice in ("auto", "git") and git_host_reachable():
        ref = os.environ.get("MINDNLP_BASE_REF", DEFAULT_REF)
        say(f"base: cloning branch {UPSTREAM_BRANCH} of {UPSTREAM_URL} at {ref}")
        git("clone", "--quiet", "--branch", UPSTREAM_BRANCH, UPSTREAM_URL, tmp)
        git("checkout", "--quiet", "--detach", ref, cwd=tmp)
        source = f"upstream branch {UPSTREAM_BRANCH} at {ref}"
    elif choice == "git":
        raise SeriesError(f"MINDNLP_BASE=git but {UPSTREAM_URL} cannot be reached")
    else:
        say(f"base: the upstream host is out of reach; building the base from the {WHEEL_SPEC} wheel")
        base_from_wheel(tmp)
        source = f"the {WHEEL_SPEC} wheel"
    with open(os.path.join(tmp, ".git", BASE_INFO), "w") as f:
        f.write(source + "\n")
    os.replace(tmp, UPSTREAM_DIR)


def git_host_reachable():
    try:
        proc = subprocess.run(["git", "ls-remote", "--heads", UPSTREAM_URL, UPSTREAM_BRANCH],
                              capture_output=True, timeout=20,
                              env=dict(os.environ, GIT_TERMINAL_PROMPT="0"))
    except (subprocess.TimeoutExpired, OSError):
        return False
    return proc.returncode == 0


def base_from_wheel(dest):
    """A one-commit repository holding the wheel's mindnlp/ package at the upstream layout."""
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL_SPEC]
        proc = subprocess.run(pip, capture_output=True, text=True)
        wheels = glob.glob(os.path.join(tmp, "mindnlp-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise SeriesError(f"could not download the {WHEEL_SPEC} wheel:\n{proc.stderr.strip()}")
        os.makedirs(dest)
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.startswith("mindnlp/")]
            wheel.extractall(dest, members)
    git("init", "--quiet", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "--quiet", "-m", f"Base: the files of the {WHEEL_SPEC} wheel", cwd=dest, env=IDENTITY)


# ---- fork and export ------------------------------------------------------------------------

def build_fork(dest=FORK_DIR):
    """Clone the base into dest and commit the series onto it, one commit per patch."""
    base = base_dir()
    patches = patches_for(base, load_series())
    shutil.rmtree(dest, ignore_errors=True)
    git("clone", "--quiet", "--no-hardlinks", base, dest)
    git("checkout", "--quiet", "--detach", head(base), cwd=dest)
    for patch in patches:
        for rel in patch["files"]:
            target = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(ROOT, rel), target)
        for edit in patch.get("edit", []):
            apply_edit(dest, edit, patch["name"])
        git("add", "-A", cwd=dest)
        message = patch["subject"].strip() + "\n\n" + patch["body"].strip() + "\n"
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=dest, env=IDENTITY)
    return base


def apply_edit(tree, edit, patch_name):
    path = os.path.join(tree, edit["file"])
    if not os.path.isfile(path):
        raise SeriesError(f"patch {patch_name}: the base has no {edit['file']}")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == edit["after"]]
    if len(hits) != 1:
        raise SeriesError(f"patch {patch_name}: {edit['file']} has {len(hits)} lines equal to "
                          f"{edit['after']!r}; the edit needs exactly one")
    at = hits[0]
    if not lines[at].endswith("\n"):
        lines[at] += "\n"
    lines.insert(at + 1, edit["insert"].rstrip("\n") + "\n")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def export(out_dir):
    """Format the fork's series into out_dir (emptied first): (the patch paths, the branch-only
    patches this base cannot make, in series order)."""
    base = build_fork()
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    git("format-patch", *FORMAT_PATCH_FLAGS, "-o", out_dir, f"{head(base)}..HEAD", cwd=FORK_DIR)
    patches = load_series()
    return sorted(glob.glob(os.path.join(out_dir, "*.patch"))), patches[len(patches_for(base, patches)):]


def export_to_patches_dir():
    """Export into patches/, keeping the committed branch-only patches a base without the branch's
    files cannot make (after checking them); the paths of every patch there."""
    with tempfile.TemporaryDirectory() as tmp:
        paths, unmade = export(tmp)
        problems = branch_only_problems(unmade, len(paths), PATCHES_DIR)
        if problems:
            raise SeriesError(branch_only_message(problems))
        kept = {name: read_bytes(path) for name, path in committed_branch_only(unmade, len(paths), PATCHES_DIR).items()}
        fresh = {os.path.basename(p): read_bytes(p) for p in paths}
    shutil.rmtree(PATCHES_DIR, ignore_errors=True)
    os.makedirs(PATCHES_DIR)
    for name, data in {**fresh, **kept}.items():
        with open(os.path.join(PATCHES_DIR, name), "wb") as f:
            f.write(data)
    if unmade:
        say(f"kept {len(kept)} branch-only patch(es) as committed: this base lacks the branch's files")
    return sorted(glob.glob(os.path.join(PATCHES_DIR, "*.patch")))


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def committed_branch_only(unmade, made_count, committed_dir):
    """{file name it must have now: committed path} for the branch-only patches this base cannot
    make that patches/ holds (see find_committed)."""
    return {name: path for _, _, name, path in find_committed(unmade, made_count, committed_dir) if path}


def find_committed(unmade, made_count, committed_dir):
    """(number, patch, file name it must have now, committed path or None) per branch-only patch this
    base cannot make, each found by its subject (a patch's text holds no number, so a patch added
    before them only renumbers them) and numbered after the `made_count` made ones."""
    by_subject = {}
    for path in sorted(glob.glob(os.path.join(committed_dir, "*.patch"))):
        by_subject.setdefault(patch_subject(path), path)
    found = []
    for number, patch in enumerate(unmade, start=made_count + 1):
        path = by_subject.get(patch["subject"].strip())
        found.append((number, patch, path and f"{number:04d}-" + os.path.basename(path)[5:], path))
    return found


def patch_subject(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.read().split("\n\n", 1)[0].replace("\n ", " ")
    subject = re.search(r"^Subject: (.*)$", header, re.M)
    return subject.group(1).strip() if subject else None


def file_sections(text):
    """{path: its diff lines} of a patch's text."""
    sections, current = {}, None
    for line in text.splitlines():
        if line.startswith("diff --git "):
            current = sections.setdefault(line.split(" b/", 1)[-1].strip(), [])
        elif current is not None:
            current.append(line)
    return sections


def branch_only_problems(unmade, made_count, committed_dir):
    """Check the committed branch-only patches against series.toml without the base to make them:
    the subject, the body, and per file exactly the edits' lines inserted after their anchor lines.
    (problem, file name) pairs."""
    problems = []
    for number, patch, _, path in find_committed(unmade, made_count, committed_dir):
        if path is None:
            problems.append(("missing from patches/", f"{number:04d} ({patch['name']})"))
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        sections = file_sections(text)
        expected = {}
        for edit in patch["edit"]:
            expected.setdefault(edit["file"], []).append(edit)
        good = patch["body"].strip() in text.split("\ndiff --git ", 1)[0] and set(sections) == set(expected)
        for rel, edits in expected.items():
            lines = sections.get(rel, [])
            added = [line[1:] for line in lines if line.startswith("+") and not line.startswith("+++")]
            removed = [line for line in lines if line.startswith("-") and not line.startswith("---")]
            inserted = [line for e in edits for line in e["insert"].rstrip("\n").splitlines()]
            good = (good and not removed and sorted(added) == sorted(inserted)
                    and all(inserted_after(lines, e["after"], e["insert"]) for e in edits))
        if not good:
            problems.append(("changed", os.path.basename(path)))
    return problems


def inserted_after(lines, after, insert):
    """Whether a file's diff lines add exactly `insert` right after the context line `after`."""
    want = ["+" + line for line in insert.rstrip("\n").splitlines()]
    return any(line == " " + after and lines[i + 1:i + 1 + len(want)] == want for i, line in enumerate(lines))


def branch_only_message(problems):
    return ("branch-only patches in patches/ do not match scripts/series.toml, and this base lacks the "
            "branch's files to make them; run scripts/export.sh with MINDNLP_BASE at a checkout of the "
            "0.4 branch.\n" + "\n".join(f"  {what}: {name}" for what, name in problems))


def write_zip(patch_paths, zip_path):
    """A byte-reproducible zip with the patches under patches/, as the judge unzips it."""
    tmp = zip_path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(patch_paths):
            info = zipfile.ZipInfo("patches/" + os.path.basename(path), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f:
                zf.writestr(info, f.read())
    os.replace(tmp, zip_path)


def stale_files(fresh_dir, committed_dir, ignore=()):
    """How committed_dir's patches differ from a fresh export in fresh_dir: (problem, file name) pairs.

    A patch's name comes from its subject and its text holds the whole message, so an edited
    subject or body shows as "changed" or, when the name moves, as one missing and one stray file."""
    fresh = {os.path.basename(p): p for p in glob.glob(os.path.join(fresh_dir, "*.patch"))}
    committed = {os.path.basename(p): p for p in glob.glob(os.path.join(committed_dir, "*.patch"))
                 if os.path.basename(p) not in ignore}
    problems = [("missing from patches/", name) for name in sorted(set(fresh) - set(committed))]
    problems += [("not made by the series", name) for name in sorted(set(committed) - set(fresh))]
    for name in sorted(set(fresh) & set(committed)):
        with open(fresh[name], "rb") as a, open(committed[name], "rb") as b:
            if a.read() != b.read():
                problems.append(("changed", name))
    return problems


# ---- applying -------------------------------------------------------------------------------

def apply_series(dest, patches_dir=PATCHES_DIR):
    """A fresh copy of the base at dest with every patch git-applied in order: the names of the
    branch-only patches skipped because the base lacks the files they edit (none on the branch)."""
    base = base_dir()
    patch_paths = sorted(glob.glob(os.path.join(patches_dir, "*.patch")))
    if not patch_paths:
        raise SeriesError(f"no *.patch in {patches_dir}")
    patches = load_series()
    branch_files = set() if has_branch_part(base, patches) else set(branch_only_files(patches))
    shutil.rmtree(dest, ignore_errors=True)
    git("clone", "--quiet", base, dest)
    git("checkout", "--quiet", "--detach", head(base), cwd=dest)
    skipped = []
    for path in patch_paths:
        touched = files_touched(path)
        if branch_files and touched and touched <= branch_files:
            skipped.append(os.path.basename(path))
            continue
        proc = git("apply", "--check", path, cwd=dest, check=False)
        if proc.returncode != 0:
            raise SeriesError(explain_apply_failure(path, proc.stderr))
        git("apply", path, cwd=dest)
    return skipped


def files_touched(patch_path):
    with open(patch_path, encoding="utf-8", errors="replace") as f:
        return {line.split(" b/", 1)[-1].strip() for line in f if line.startswith("diff --git ")}


def explain_apply_failure(patch_path, stderr):
    """Name the patch, the file and the hunk that git apply refused."""
    name = os.path.basename(patch_path)
    failed = re.search(r"patch failed: (.+):(\d+)", stderr)
    if not failed:
        return f"{name} does not apply:\n{stderr.strip()}"
    file, line = failed.group(1), int(failed.group(2))
    hunk = hunk_header(patch_path, file, line) or f"the hunk at line {line}"
    return f"{name} does not apply: {file}, {hunk}\n{stderr.strip()}"


def hunk_header(patch_path, file, old_line):
    current = None
    with open(patch_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("diff --git "):
                current = line.split(" b/", 1)[-1].strip()
            elif line.startswith("@@") and current == file:
                start = re.match(r"@@ -(\d+)", line)
                if start and int(start.group(1)) == old_line:
                    return "hunk " + line.strip()
    return None


def patched_tree():
    """A cached patched tree for the current overlay: export to a temp dir, then git apply."""
    base = base_dir()
    stamp = overlay_stamp(base)
    dest = os.path.join(PATCHED_ROOT, stamp)
    if os.path.isdir(dest):
        return dest
    with build_lock():
        if os.path.isdir(dest):
            return dest
        with tempfile.TemporaryDirectory() as tmp:
            export(os.path.join(tmp, "patches"))
            apply_series(dest + ".tmp", os.path.join(tmp, "patches"))
        os.replace(dest + ".tmp", dest)
        # Trees other runs may still import from stay a day; older ones go.
        for old in glob.glob(os.path.join(PATCHED_ROOT, "*")):
            if old != dest and time.time() - os.path.getmtime(old) > 86400:
                shutil.rmtree(old, ignore_errors=True)
    return dest


class build_lock:
    """Serialises builds between concurrent test runs in one checkout."""

    def __enter__(self):
        os.makedirs(os.path.join(ROOT, ".build"), exist_ok=True)
        self.handle = open(os.path.join(ROOT, ".build", "lock"), "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


# ---- command line ---------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("base")
    sub.add_parser("fork")
    exp = sub.add_parser("export")
    exp.add_argument("--check", action="store_true", help="fail if patches/ is stale")
    app = sub.add_parser("apply")
    app.add_argument("dest")
    app.add_argument("--patches", default=PATCHES_DIR)
    sub.add_parser("patched")
    args = parser.parse_args(argv)
    try:
        if args.command == "base":
            base = base_dir()
            say("base: " + describe_base(base))
            print(base)
        elif args.command == "fork":
            base = build_fork()
            say(f"fork: {FORK_DIR} = {describe_base(base)} + {len(load_series())} commits")
        elif args.command == "export" and args.check:
            with tempfile.TemporaryDirectory() as tmp:
                paths, unmade = export(tmp)
                kept = committed_branch_only(unmade, len(paths), PATCHES_DIR)
                ignore = {os.path.basename(path) for path in kept.values()}
                problems = stale_files(tmp, PATCHES_DIR, ignore)
                branch_problems = branch_only_problems(unmade, len(paths), PATCHES_DIR)
            if branch_problems:
                raise SeriesError(branch_only_message(branch_problems))
            problems += [("numbered otherwise by the series", os.path.basename(path))
                         for name, path in kept.items() if os.path.basename(path) != name]
            if problems:
                raise SeriesError("patches/ is stale against mindnlp/ and scripts/series.toml; run "
                                  "scripts/export.sh.\n" + "\n".join(f"  {what}: {name}" for what, name in problems))
            say("patches/ is up to date" + (f" ({len(unmade)} branch-only patch(es) checked against "
                                             "series.toml only: this base lacks the branch's files)" if unmade else ""))
        elif args.command == "export":
            paths = export_to_patches_dir()
            write_zip(paths, ZIP_PATH)
            say(f"exported {len(paths)} patches to patches/ and {os.path.basename(ZIP_PATH)}")
        elif args.command == "apply":
            skipped = apply_series(os.path.abspath(args.dest), os.path.abspath(args.patches))
            say(f"applied {args.patches} onto a copy of {describe_base(base_dir())} at {args.dest}")
            if skipped:
                say(f"skipped {len(skipped)} branch-only patch(es), which edit files this base does not have "
                    "(the 0.4 branch's llm/ tree): " + ", ".join(skipped))
        elif args.command == "patched":
            print(patched_tree())
    except SeriesError as err:
        say(f"error: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
