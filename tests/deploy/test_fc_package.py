"""`deploy fc --package` takes only the include list, and no secret, VCS folder or outside file."""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import pytest

from agentqueue.cli import main
from agentqueue.deploy.package_files import GitIgnore

OUTSIDE_SECRET = "root:x:0:0:outside-the-tree-7f3a"
ENV_SECRET = "DASHSCOPE_API_KEY=sk-planted-9c1d"


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository in the working folder with an app package full of things to leave out."""
    for name in list(os.environ):
        if name.startswith(("AGENTQUEUE_", "ALIBABA_CLOUD_")):
            monkeypatch.delenv(name)
    repo = tmp_path / "repo"
    outside = write(tmp_path / "elsewhere" / "passwd", OUTSIDE_SECRET)
    write(repo / ".git" / "HEAD", "ref: refs/heads/main\n")
    write(repo / ".gitignore", "plantedapp/generated/\n")
    app = repo / "plantedapp"
    write(app / "__init__.py", "from examples.weather import app\n")
    write(app / "tools.py", "VALUE = 1\n")
    write(app / "credentials.py", "# code that loads credentials: a source file, kept\n")
    write(app / "prompts" / "system.txt", "You are helpful.\n")
    write(app / ".gitignore", "*.log\n!keep.log\nlocal_settings.py\ndata/\n")
    write(app / "debug.log", "noise")
    write(app / "keep.log", "kept on purpose")
    write(app / "local_settings.py", "PASSWORD = 'x'\n")
    write(app / "data" / "big.csv", "1,2\n")
    write(app / "sub" / ".gitignore", "/notes.txt\n")
    write(app / "sub" / "notes.txt", "private")
    write(app / "sub" / "deeper" / "notes.txt", "not anchored here: kept")
    write(app / ".env", ENV_SECRET)
    write(app / ".env.production", ENV_SECRET)
    write(app / "credentials.json", '{"private_key": "planted-key-5e2b"}')
    write(app / "id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----")
    write(app / "server.pem", "-----BEGIN PRIVATE KEY-----")
    write(app / ".aws" / "config", "[default]\n")
    write(app / ".git" / "config", "[remote]\n\turl = https://token@example.com/x.git\n")
    (app / "passwd").symlink_to(outside)
    (app / "linked-dir").symlink_to(outside.parent, target_is_directory=True)
    (app / "alias.py").symlink_to(app / "tools.py")
    (app / "dangling").symlink_to(tmp_path / "missing")
    os.mkfifo(app / "pipe")
    monkeypatch.chdir(repo)
    yield repo
    sys.modules.pop("plantedapp", None)


def test_the_zip_holds_the_include_list_and_none_of_the_planted_files(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["deploy", "fc", "--package", "--no-deps", "--app", "plantedapp:app", "-o", "dist/p.zip"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    with zipfile.ZipFile(planted / "dist" / "p.zip") as archive:
        names = archive.namelist()
        contents = b"".join(archive.read(n) for n in names)
    app_files = sorted(n for n in names if n.startswith("plantedapp/"))
    assert app_files == [
        "plantedapp/__init__.py",
        "plantedapp/alias.py",
        "plantedapp/credentials.py",
        "plantedapp/keep.log",
        "plantedapp/prompts/system.txt",
        "plantedapp/sub/deeper/notes.txt",
        "plantedapp/tools.py",
    ]
    assert all(n.startswith(("agentqueue/", "plantedapp/")) for n in names)  # nothing else
    assert "agentqueue/workers/fc.py" in names
    assert OUTSIDE_SECRET.encode() not in contents and ENV_SECRET.encode() not in contents
    # The planted secrets' own text (the word "planted" itself may be in our sources).
    assert b"token@example.com" not in contents and b"planted-key-5e2b" not in contents
    # --package lists what went in, then what was left out and why.
    assert "  plantedapp/alias.py\n" in out and "  agentqueue/workers/fc.py\n" in out
    left_out = out[out.index("left out (") :]
    for line in (
        "  plantedapp/.aws/  (a folder of credentials)",
        "  plantedapp/.env  (a .env file: environments hold secrets)",
        "  plantedapp/.env.production  (a .env file: environments hold secrets)",
        "  plantedapp/.git/  (a version-control folder)",
        "  plantedapp/credentials.json  (a credential or key file by its name)",
        "  plantedapp/dangling  (a symlink that leads nowhere)",
        f"  plantedapp/data/  (ignored by {planted}/plantedapp/.gitignore:4)",
        f"  plantedapp/debug.log  (ignored by {planted}/plantedapp/.gitignore:1)",
        "  plantedapp/id_ed25519  (a credential or key file by its name)",
        f"  plantedapp/linked-dir  (a symlink out of the tree (to {planted.parent}/elsewhere))",
        f"  plantedapp/local_settings.py  (ignored by {planted}/plantedapp/.gitignore:3)",
        f"  plantedapp/passwd  (a symlink out of the tree (to {planted.parent}/elsewhere/passwd))",
        "  plantedapp/pipe  (not a regular file)",
        "  plantedapp/server.pem  (a credential or key file by its name)",
        f"  plantedapp/sub/notes.txt  (ignored by {planted}/plantedapp/sub/.gitignore:1)",
    ):
        assert line + "\n" in left_out, line
    assert out.rstrip().splitlines()[-1].startswith("wrote dist/p.zip (")


def test_the_enclosing_repository_s_gitignore_applies_inside_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    write(repo / ".git" / "HEAD", "ref: refs/heads/main\n")
    write(repo / ".gitignore", "/nested/app2/generated/\n*.secret\n")
    app = repo / "nested" / "app2"
    write(app / "__init__.py", "from examples.weather import app\n")
    write(app / "generated" / "out.py", "X = 1\n")
    write(app / "token.secret", "t0k3n")
    write(repo / "nested" / "__init__.py")
    monkeypatch.chdir(repo)
    try:
        code = main(
            ["deploy", "fc", "--package", "--no-deps", "--app", "nested.app2:app", "-o", "p.zip"]
        )
    finally:
        sys.modules.pop("nested.app2", None)
        sys.modules.pop("nested", None)
    out, err = capsys.readouterr()
    assert code == 0, err
    names = zipfile.ZipFile(repo / "p.zip").namelist()
    assert sorted(n for n in names if n.startswith("nested/")) == [
        "nested/__init__.py",
        "nested/app2/__init__.py",
    ]
    assert f"  nested/app2/generated/  (ignored by {repo}/.gitignore:1)\n" in out
    assert f"  nested/app2/token.secret  (ignored by {repo}/.gitignore:2)\n" in out


@pytest.mark.parametrize(
    ("rules", "path", "is_dir", "ignored"),
    [
        ("*.log", "a/b/x.log", False, True),
        ("*.log\n!keep.log", "a/keep.log", False, False),
        ("/build", "build", True, True),
        ("/build", "src/build", True, False),
        ("build/", "src/build", False, False),  # a trailing / matches folders only
        ("docs/**/*.md", "docs/a/b/c.md", False, True),
        ("docs/**/*.md", "other/docs/c.md", False, False),
        ("a/**/b", "a/b", True, True),
        ("[ab].txt", "b.txt", False, True),
        ("[!ab].txt", "b.txt", False, False),
        ("\\#notes", "#notes", False, True),
        ("# a comment\n\n  ", "# a comment", False, False),
        ("secret?", "secret1", False, True),
    ],
)
def test_gitignore_rules_follow_git(
    tmp_path: Path, rules: str, path: str, is_dir: bool, ignored: bool
) -> None:
    ignores = GitIgnore().with_file(write(tmp_path / ".gitignore", rules))
    assert (ignores.ignored(tmp_path / path, is_dir) is not None) is ignored
