"""Jobs: the job table, the checks before a job exists, the job function, the workers (embedded threads, or
Celery queue workers on a broker), the reaper and the sweeper.

Nothing in here knows of HTTP; the API (:mod:`tileseg.api`) and ``tileseg worker`` call into it.
"""
