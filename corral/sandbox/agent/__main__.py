"""Entry point: ``python3 -I -S <agent dir> --socket PATH [--home DIR] [--user NAME]``.

Run as a directory the agent's package has no parent on ``sys.path``; put its parent there and
import it under its directory name, so that ``python -m corral.sandbox.agent`` works as well.
"""

import os
import sys

if __package__:
    _package = __package__
else:
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[0] = os.path.dirname(_here)
    _package = os.path.basename(_here)

__import__(_package + ".server")
sys.exit(sys.modules[_package + ".server"].main(sys.argv[1:]))
