"""Start a session's single-user server (``python -m workbench_lab.singleuser``).

The same as ``jupyterhub-singleuser``, without the 1.5 to 2 s that importing the optional
``rfc3987_syntax`` costs at every start (it builds a parser at import time; jsonschema only uses
it to check the ``iri`` string format, which no Jupyter event schema uses).
"""

import sys


def main() -> None:
    sys.modules.setdefault("rfc3987_syntax", None)
    from jupyterhub.singleuser import main as singleuser_main

    sys.exit(singleuser_main())


if __name__ == "__main__":
    main()
