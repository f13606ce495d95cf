"""``python -m napari_fairseg.cli``: the ``fairseg`` command without its script."""

import sys

from . import main

sys.exit(main())
