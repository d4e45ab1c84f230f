"""``pgsam-node token create|list|revoke``: access tokens for the dashboard and the API.

``create`` prints the new token once on stdout (it is stored only as a salted scrypt hash).
"""

from __future__ import annotations

import json

from pgsam_node.commands import add_config_arg, cli_actor
from pgsam_node.db import open_database
from pgsam_node.web.tokens import SCOPES, create_token, list_tokens, revoke_token
from pgsam_node.commands import load


def register(sub) -> None:
    p = sub.add_parser("token", help="create, list or revoke dashboard/API access tokens")
    tsub = p.add_subparsers(dest="token_action", metavar="ACTION")
    tsub.required = True
    c = tsub.add_parser("create", help="create a token and print it once")
    c.add_argument("name")
    c.add_argument("--scope", action="append", choices=SCOPES, default=[],
                   help="repeatable: read (always), actions, report-text, admin")
    add_config_arg(c)
    ls = tsub.add_parser("list", help="list tokens (names, scopes, last use; never the secret)")
    ls.add_argument("--json", action="store_true")
    add_config_arg(ls)
    r = tsub.add_parser("revoke", help="revoke a token (its sessions end too)")
    r.add_argument("name")
    add_config_arg(r)
    p.set_defaults(func=run)


def run(args) -> int:
    settings = load(args)
    db = open_database(settings)
    try:
        if args.token_action == "create":
            with db.transaction() as s:
                token = create_token(s, args.name, args.scope, actor=cli_actor())
            print(token)
        elif args.token_action == "revoke":
            with db.transaction() as s:
                revoke_token(s, args.name, actor=cli_actor())
            print(f"token {args.name} revoked")
        else:
            with db.session() as s:
                rows = list_tokens(s)
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print(f"{'NAME':<20} {'SCOPES':<32} {'CREATED':<20} {'LAST USED':<20} STATE")
                for t in rows:
                    print(f"{t['name']:<20} {','.join(t['scopes']):<32} {(t['created_at'] or '')[:19]:<20} "
                          f"{(t['last_used_at'] or '-')[:19]:<20} {'revoked' if t['revoked'] else 'active'}")
    finally:
        db.dispose()
    return 0
