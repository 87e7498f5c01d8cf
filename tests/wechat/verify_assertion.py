"""A team's upstream checking a delivered event's assertion with PyJWT against the JWKS, as
README says: reads {"jwks": {...}, "token": "...", "issuer": "weapp"} on stdin, prints the
verified claims (or fails)."""
import json
import sys

import jwt

spec = json.load(sys.stdin)
header = jwt.get_unverified_header(spec["token"])
keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(spec["jwks"]).keys}
claims = jwt.decode(
    spec["token"],
    keys[header["kid"]].key,
    algorithms=["ES256"],
    issuer=spec["issuer"],
    options={"require": ["exp", "iat", "iss"]},
)
json.dump(claims, sys.stdout)
