"""Task datasets and generators for the long-sequence benchmark (no model imports).

``get_task(name)`` / ``list_tasks()`` give the registered tasks (listops, pathfinder, text, pixels,
fmnist_images, fortunes-lm); ``taylorshift data prepare <task>`` fetches or generates their files into the cache
(``$TAYLORSHIFT_DATA_DIR`` or ``~/.cache/taylorshift/data``), never into the repository. Sequence datasets yield
``(tokens LongTensor (N,), label int)``; batch variable lengths with :func:`pad_collate`. The language-modelling
task (kind ``lm``) yields ``LongTensor (seq_len + 1,)`` byte windows. Loaders for the original
files (CIFAR-10 pickles, aclImdb, LRA ListOps TSV) are in :mod:`taylorshift.data.formats`.
"""

from taylorshift.data.cache import DataNotPreparedError, DataSourceError, default_cache_dir
from taylorshift.data.registry import Task, get_task, list_tasks
from taylorshift.data.sequences import pad_collate

__all__ = ["DataNotPreparedError", "DataSourceError", "Task", "default_cache_dir", "get_task", "list_tasks",
           "pad_collate"]
