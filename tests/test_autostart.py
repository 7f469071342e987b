"""The auto-start artefacts: a systemd user unit systemd accepts, a .desktop entry desktop-file-validate
accepts, a LaunchAgent plist, a Windows Run-key command line; each must start exactly the daemon command,
even from a Python whose path has spaces and characters the formats treat specially."""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bgmask.desktop import autostart
from bgmask.desktop.hostprofiles import Host


def tool(name: str) -> str:
    """The validator from Debian (systemd, desktop-file-utils); CI must have it, a developer may not."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing on CI")
        pytest.skip(f"{name} is not installed")
    return path


def python_in(folder: Path) -> str:
    """A working interpreter reached through a link in folder."""
    folder.mkdir()
    link = folder / "python3"
    link.symlink_to(sys.executable)
    return str(link)


def desktop_exec_words(value: str) -> list[str]:
    """Read an Exec value the way the Desktop Entry spec says launchers do."""
    value = value.replace("\\\\", "\\").replace("%%", "%")  # string escapes, then field-code escapes
    words, word, quoted, index = [], "", False, 0
    while index < len(value):
        char = value[index]
        if quoted and char == "\\" and value[index + 1] in '"`$\\':
            word, index = word + value[index + 1], index + 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == " " and not quoted:
            words.append(word)
            word = ""
        else:
            word += char
        index += 1
    return words + [word]


def linux(home: Path, **extra: str) -> Host:
    return Host("linux", {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "cfg"), **extra})


def serve(python: str) -> list[str]:
    return [python, "-m", "bgmask", "serve", "--preload-delay", "30"]


def test_systemd_unit_is_valid_and_runs_the_exact_command(tmp_path):
    odd_python = python_in(tmp_path / "my tools %h $HOME")
    plan = autostart.plan(linux(tmp_path), odd_python, autostart.SYSTEMD)
    (unit, content), = plan.files
    assert unit == tmp_path / "cfg/systemd/user/bgmask.service"
    assert plan.symlinks == ((tmp_path / "cfg/systemd/user/default.target.wants/bgmask.service", unit),)
    unit.parent.mkdir(parents=True)
    unit.write_bytes(content)

    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    checked = subprocess.run([tool("systemd-analyze"), "verify", "--user", str(unit)], capture_output=True,
                             text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.strip() == "", checked.stderr  # unknown keys and bad values only warn

    text = content.decode()
    assert "Restart=on-failure\n" in text and "RestartPreventExitStatus=3\n" in text
    assert "WantedBy=default.target\n" in text
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    # systemd: C-style escapes inside double quotes, %% and $$ for literal % and $.
    words = shlex.split(exec_start[len("ExecStart="):].replace("%%", "%").replace("$$", "$"))
    assert words == serve(odd_python)


def test_systemd_cannot_run_paths_with_quotes_or_backslashes():
    assert autostart.systemd_can_run("/home/me/my python %x $y/bin/python3")
    assert not autostart.systemd_can_run("/home/o'brien/bin/python3")
    assert not autostart.systemd_can_run("/opt/a\\b/python3")


def test_systemd_refuses_a_unit_whose_python_is_gone(tmp_path):
    """The check above can fail: systemd-analyze rejects a unit that cannot start."""
    unit = tmp_path / "bgmask.service"
    unit.write_text(autostart.systemd_unit(serve(str(tmp_path / "no such python"))))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    checked = subprocess.run([tool("systemd-analyze"), "verify", "--user", str(unit)], capture_output=True,
                             text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}, timeout=60)
    assert checked.returncode != 0


def test_desktop_entry_is_valid_and_runs_the_exact_command(tmp_path):
    odd_python = python_in(tmp_path / "my tools %h $HOME 'q' \"qq\" \\b")
    plan = autostart.plan(linux(tmp_path), odd_python, autostart.XDG)
    (entry, content), = plan.files
    assert entry == tmp_path / "cfg/autostart/bgmask.desktop"
    entry.parent.mkdir(parents=True)
    entry.write_bytes(content)

    checked = subprocess.run([tool("desktop-file-validate"), str(entry)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0 and checked.stdout.strip() == "", checked.stdout + checked.stderr

    exec_line = next(line for line in content.decode().splitlines() if line.startswith("Exec="))
    assert desktop_exec_words(exec_line[len("Exec="):]) == serve(odd_python)


def test_launch_agent_plist_round_trips(tmp_path):
    plan = autostart.plan(Host("darwin", {"HOME": str(tmp_path)}), "/usr/local/bin/python3.12")
    assert plan.mechanism == autostart.LAUNCHD
    (agent, content), = plan.files
    assert agent == tmp_path / "Library/LaunchAgents/org.bgmask.daemon.plist"
    loaded = plistlib.loads(content)
    assert loaded["Label"] == "org.bgmask.daemon" == agent.stem
    assert loaded["ProgramArguments"] == serve("/usr/local/bin/python3.12")
    assert loaded["RunAtLoad"] is True
    assert loaded["KeepAlive"] == {"SuccessfulExit": False}


def test_windows_run_key_starts_pythonw_without_a_console(tmp_path):
    scripts = tmp_path / "Program Files" / "Python312"
    scripts.mkdir(parents=True)
    python = scripts / "python.exe"
    python.write_text("")
    host = Host("win32", {"USERPROFILE": str(tmp_path)})

    plan = autostart.plan(host, str(python))
    assert plan.mechanism == autostart.RUN_KEY_MECHANISM and plan.files == ()
    assert plan.registry_value == f'"{python}" -m bgmask serve --preload-delay 30'  # no pythonw.exe yet

    (scripts / "pythonw.exe").write_text("")
    plan = autostart.plan(host, str(python))
    assert plan.registry_value == f'"{scripts / "pythonw.exe"}" -m bgmask serve --preload-delay 30'
    assert plan.command == tuple(serve(str(scripts / "pythonw.exe")))


def test_linux_uses_systemd_only_when_a_user_manager_runs(tmp_path):
    booted = tmp_path / "run-systemd-system"
    runtime = tmp_path / "run-user-1000"
    runtime.mkdir()
    host = linux(tmp_path, XDG_RUNTIME_DIR=str(runtime))
    assert not autostart.has_systemd_user_manager(host, booted)  # systemd is not PID 1
    booted.mkdir()
    assert not autostart.has_systemd_user_manager(host, booted)  # no user manager for this session
    (runtime / "systemd").mkdir()
    assert autostart.has_systemd_user_manager(host, booted)
    assert not autostart.has_systemd_user_manager(linux(tmp_path), booted)  # no XDG_RUNTIME_DIR at all


def test_each_platform_gets_its_own_mechanism(tmp_path):
    assert autostart.default_mechanism(Host("darwin", {"HOME": str(tmp_path)})) == autostart.LAUNCHD
    assert autostart.default_mechanism(Host("win32", {"USERPROFILE": str(tmp_path)})) == \
        autostart.RUN_KEY_MECHANISM
    with pytest.raises(ValueError):
        autostart.plan(Host("darwin", {"HOME": str(tmp_path)}), "/usr/bin/python3", autostart.SYSTEMD)
