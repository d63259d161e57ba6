"""Jobs: the job table, the checks before a job exists, the job function, the workers and the sweeper.

Nothing in here knows of HTTP; the API (:mod:`service.api`) and, later, queue workers call into it.
"""
