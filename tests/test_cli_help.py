"""`cli.py --help` and every subcommand's help read well: each option has a help line and shows its default."""
import click
import pytest
from click.testing import CliRunner

import cli


def commands(group=cli.main, prefix=()):
    for name, cmd in sorted(group.commands.items()):
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
