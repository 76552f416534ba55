"""`from jaxcls import config_base`: the import that config files use, kept stable.

The schema itself lives in `jaxcls.config.base`; this module is that module under its old name, so every
public and private name of it resolves here.
"""

import sys

from jaxcls.config import base as _base

sys.modules[__name__] = _base
