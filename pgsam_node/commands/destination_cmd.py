"""``pgsam-node destination test [NAME]``: C-ECHO a DIMSE destination or check a DICOMweb one
(all configured destinations without NAME). Exit status 1 when any check fails."""

from __future__ import annotations

from pgsam_node.commands import add_config_arg, load
from pgsam_node.errors import ConfigError, SendError


def register(sub) -> None:
    p = sub.add_parser("destination", help="test the configured destinations (C-ECHO / DICOMweb check)")
    dsub = p.add_subparsers(dest="destination_action", metavar="ACTION")
    dsub.required = True
    t = dsub.add_parser("test", help="C-ECHO (dimse) or QIDO-RS capability check (dicomweb)")
    t.add_argument("name", nargs="?", help="destination name; default: all")
    add_config_arg(t)
    p.set_defaults(func=run)


def run(args) -> int:
    from pgsam_node.deliver.check import test_destination  # pynetdicom: loaded only when run

    settings = load(args)
    dests = [d for d in settings.destinations if args.name in (None, d.name)]
    if not dests:
        raise ConfigError(f"no destination named {args.name!r}" if args.name else "no destinations configured")
    failed = 0
    for d in dests:
        try:
            print(f"OK   {test_destination(settings, d)}")
        except SendError as exc:
            failed += 1
            print(f"FAIL {d.name}: {exc} ({'permanent' if exc.permanent else 'transient'})")
    return 1 if failed else 0
