"""The developer install: `pip install -e .` into a venv gives a daemon twistd can find.

twistd finds websmsd through the dropin twisted/plugins/websmsd_plugin.py, by scanning
every sys.path entry for a twisted/plugins/ directory.  An editable install made by an
import hook (setuptools' default for PEP 660 when it cannot use a plain .pth file) serves
`import websmsd` but hides the dropin from that scan: `twistd websmsd` then says "Unknown
command: websmsd" (issue 12, item 8).  setup.py's package_dir makes setuptools write a
.pth file with the source tree instead.

The test makes a venv (--system-site-packages: Twisted and treq come from the Python
running the test), installs a copy of the source tree into it the way README says, with
--no-index --no-deps --no-build-isolation (no internet needed, about 5-10 s), and runs
the daemon's plugin, `websmsd check-config` and an edit of the tree through it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Not part of the source tree (a copy of them would be slow, or confuse the build).
SKIP_NAMES = {".git", "node_modules", "__pycache__", "build", "dist", "_artifacts", "var",
              "twistd.pid", "dropin.cache"}


def _ignore(directory, names):
    return [n for n in names
            if n in SKIP_NAMES or n.startswith(".venv") or n.endswith(".egg-info")
            or n.endswith(".pyc")]


def _run(args, cwd, env, timeout=120):
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _has(module: str) -> bool:
    # In a child: importing pip and setuptools in one process trips distutils' hack.
    return _run([sys.executable, "-c", f"import {module}"], ROOT, os.environ).returncode == 0


@pytest.fixture(scope="module")
def devinstall(tmp_path_factory):
    if not (_has("pip") and _has("setuptools") and _has("venv")):
        pytest.skip("needs pip, setuptools and venv for this Python")
    base = tmp_path_factory.mktemp("devinstall")
    src = base / "websmsd-src"
    shutil.copytree(ROOT, src, ignore=_ignore, symlinks=True)
    venv = base / "venv"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_CONFIG_FILE=os.devnull,
               PYTHONNOUSERSITE="1")
    made = _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv],
                base, env)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        # Run from a venv (the newest Twisted): the new venv sees that venv's packages,
        # ahead of the system's (--system-site-packages reaches the base Python's only).
        import site

        [site_dir] = [p for p in (venv / "lib").glob("python*/site-packages")]
        (site_dir / "parent-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # pip before 25.3 falls back on the legacy `setup.py develop` (a .pth file always)
    # for a project without pyproject.toml; newer pips build every editable install by
    # PEP 660, the case that hid the dropin.  Test that case with either pip.
    helptext = _run([python, "-m", "pip", "install", "--help"], base, env).stdout
    pep517 = ["--use-pep517"] if "--use-pep517" in helptext else []
    installed = _run([python, "-m", "pip", "install", "--no-index", "--no-deps",
                      "--no-build-isolation", "--no-cache-dir", *pep517, "-e", src], base, env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv, src, env


def test_twistd_finds_the_plugin(devinstall):
    venv, src, env = devinstall
    # What the twistd script runs (in a --system-site-packages venv, twistd on PATH is
    # the system's, for the system's Python; `websmsd run` runs this same code).
    twistd = [venv / "bin" / "python", "-c", "from twisted.scripts.twistd import run; run()"]
    out = _run([*twistd, "websmsd", "--help"], venv.parent, env, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Usage: twistd [options] websmsd [--config FILE]" in out.stdout
    # The plugin and the package come from the source tree, not from a copy.
    where = _run([venv / "bin" / "python", "-c", textwrap.dedent("""\
        import twisted, websmsd
        from twisted.plugin import getPlugins
        from twisted.application.service import IServiceMaker
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "websmsd"]
        print(websmsd.__file__)
        print(makers[0].__module__ if makers else None)
        print(twisted.__version__)
        """)], venv.parent, env, timeout=60)
    assert where.returncode == 0, where.stderr
    package, maker, version = where.stdout.split()
    assert Path(package) == src / "websmsd" / "__init__.py"
    assert maker != "None"
    import twisted

    assert version == twisted.__version__  # the Twisted of the Python running the test


def test_websmsd_check_config_runs(devinstall):
    venv, src, env = devinstall
    out = _run([venv / "bin" / "websmsd", "check-config", "examples/websms.conf"], src, env,
               timeout=60)
    assert out.returncode in (0, 1), out.stdout + out.stderr  # 1: the file has problems
    assert "Traceback" not in out.stderr
    assert out.stdout.startswith("websmsd check-config: examples/websms.conf")
    assert "[websms]" in out.stdout


def test_an_edit_of_the_tree_is_live(devinstall):
    # Editable: the venv runs the tree as it is now, without a reinstall.
    venv, src, env = devinstall
    marker = src / "websmsd" / "_devinstall_probe.py"
    marker.write_text("ANSWER = 42\n")
    try:
        out = _run([venv / "bin" / "python", "-c",
                    "from websmsd._devinstall_probe import ANSWER; print(ANSWER)"],
                   venv.parent, env, timeout=60)
    finally:
        marker.unlink()
    assert (out.returncode, out.stdout.strip()) == (0, "42"), out.stderr
