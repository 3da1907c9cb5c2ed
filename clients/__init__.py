"""The site: the ClientApp, what it does with each message, and its warm worker."""

from orchestrator import quiet_imports as _quiet_imports

_quiet_imports.install()  # the site's processes may import transformers before orchestrator
