"""`cli.py --help` and every subcommand's help read well: each option has a help line and shows its default."""
import click
import pytest
from click.testing import CliRunner

import cli


def commands(group=cli.main, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            yield from commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


@pytest.mark.parametrize("path,cmd", list(commands()), ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_option_has_help_and_default(path, cmd):
    res = CliRunner().invoke(cli.main, [*path, "--help"])
    assert res.exit_code == 0
    assert cmd.help and len(cmd.help.strip()) > 20
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            assert p.help, f"{' '.join(path)} {p.opts[0]} has no help"
            has_default = (not p.is_flag and p.default not in (None, ()) and "UNSET" not in repr(p.default)
                           and not p.required and not p.multiple)
            if has_default and not callable(p.default):
                assert "default:" in res.output, f"{' '.join(path)}: defaults are not shown"


def test_top_level_help_lists_the_chain():
    res = CliRunner().invoke(cli.main, ["--help"])
    for name in ("extract", "fit", "pseudo-label", "ensemble", "evaluate", "demo", "features", "cache", "predict"):
        assert name in res.output


def test_commands_are_imported_only_when_used(tmp_path):
    """`cache info`, `extract`, `features` must not pay for importing torch and scikit-learn."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, cli\nfrom click.testing import CliRunner\n"
            f"r = CliRunner().invoke(cli.main, ['cache', 'info', '--cache', {str(tmp_path)!r}])\n"
            "assert r.exit_code == 1 and 'no feature sets' in r.output, r.output\n"
            "heavy = ('torch', 'sklearn', 'models.cli_fit', 'ensemble.cli_ensemble')\n"
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(cli.__file__).parent, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_listed_command_loads_under_its_name():
    ctx = click.Context(cli.main)
    names = cli.main.list_commands(ctx)
    assert names == sorted(names) and len(names) == 12 and {"fit", "export", "recognise"} <= set(names)
    for name in names:
        assert cli.main.get_command(ctx, name).name == name
    assert cli.main.get_command(ctx, "no-such-command") is None


def test_the_command_line_ends_with_the_command_s_code_output_and_exit_handlers(tmp_path):
    """`python cli.py` leaves without the interpreter's teardown (cli.run): the exit code, every line
    of output through a pipe and the exit handlers (log files, landmarkers) must survive that."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(cli.__file__).parent

    def run(*args, code=None):
        cmd = [sys.executable, "cli.py", *args] if code is None else [sys.executable, "-c", code, *args]
        return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)

    ok = run("cache", "--help")
    whole = CliRunner().invoke(cli.main, ["cache", "--help"], prog_name="cli.py").output
    assert ok.returncode == 0 and "verify" in ok.stdout and ok.stdout == whole  # nothing lost in the pipe
    bad = run("recognise", str(tmp_path / "no-bundle"), str(tmp_path / "clip.mp4"))
    assert bad.returncode == 1 and "is not a model bundle" in bad.stderr and "Traceback" not in bad.stderr
    assert run("no-such-command").returncode == 2
    flag = tmp_path / "handler-ran"
    hook = (f"import atexit, sys; atexit.register(lambda: open({str(flag)!r}, 'w').write('yes')); "
            "sys.argv = ['cli.py', '--help']; import cli; cli.run()")
    assert run(code=hook).returncode == 0 and flag.read_text() == "yes"
