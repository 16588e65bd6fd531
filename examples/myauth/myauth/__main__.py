"""python -m myauth USER [--ttl SECONDS] [--tag TAG ...]: print a signed token."""

import argparse
import os
import sys

from . import SECRET_ENV, make_token

parser = argparse.ArgumentParser(prog="python -m myauth")
parser.add_argument("user")
parser.add_argument("--ttl", type=float, default=3600)
parser.add_argument("--tag", action="append", default=[])
args = parser.parse_args()
secret = os.environ.get(SECRET_ENV)
if not secret:
    sys.exit(f"set {SECRET_ENV} first")
print(make_token(args.user, secret, args.ttl, args.tag))
