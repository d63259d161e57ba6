"""A job split into shards in queue mode: each shard a band of tile rows run by any worker, then assembled.

- :mod:`.store`: the shards' rows in the job table, every state change a compare-and-set.
- :mod:`.files`: where a shard's files are kept (the results folder or the results bucket).
- :mod:`.run`: a shard attempt, and the assembly once every shard is done.
"""
