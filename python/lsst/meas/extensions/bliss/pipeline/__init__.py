"""Butler-facing layer of BLISS: PipelineTasks, the model dataset, adapters and table writers.

Unlike the core package, the modules here import the Rubin middleware
(``lsst.pipe.base``, ``lsst.daf.butler``, ``lsst.images``).  The demo
repository builder and its report live in ``pipeline.demo``.
"""

from ._compatibility import *
from ._core_config import *
from ._deblend_task import *
from ._exposure import *
from ._ids import *
from ._launcher import *
from ._model_dataset import *
from ._schema import *
from ._tables import *
from ._train_task import *
from ._validate_task import *
